"""Loading a state dict with a readable report (missing / unexpected / mismatched keys).

A load that leaves part of the weights it was meant to set at their initial values is an
error: evaluating random weights as if pretrained is the worst silent failure a
pretraining framework can have. ``allow_partial=True`` (``allow_partial_load=true`` on the
command line) accepts it, and the report then says how many tensors were loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from maskfm.errors import UserInputError


class IncompleteLoadError(UserInputError):
    """A weight file does not cover the parameters it must set."""


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a model."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[str] = field(default_factory=list)  # in both, different shapes (not loaded)
    required: int = 0  # tensors the load had to set (e.g. every encoder tensor)
    required_loaded: int = 0

    def table(self) -> str:
        """Key | status lines, repeated layers folded as ``blocks.{0...11}.x``."""
        lines = [
            f"loaded {len(self.loaded)} tensors ({self.required_loaded} of the {self.required} required)"
        ]
        for status, keys in (("MISSING", self.missing), ("UNEXPECTED", self.unexpected)):
            for key in fold_layer_indices(keys):
                lines.append(f"  {status:<10} {key}")
        lines += [f"  {'MISMATCHED':<10} {entry}" for entry in self.mismatched]
        return "\n".join(lines)

    def summary(self) -> dict:
        """The numbers for eval.json."""
        return {
            "loaded_tensors": len(self.loaded),
            "required_tensors": self.required,
            "required_loaded": self.required_loaded,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": self.mismatched,
        }


def fold_layer_indices(keys: list[str]) -> list[str]:
    """``["b.0.w", "b.1.w", "b.2.w"]`` -> ``["b.{0...2}.w"]`` (same key up to one index)."""
    groups: dict[str, list[int]] = {}
    for key in keys:
        match = re.search(r"\.(\d+)\.", key)
        if match is None:
            groups.setdefault(key, [])
            continue
        pattern = key[: match.start()] + ".{}." + key[match.end() :]
        groups.setdefault(pattern, []).append(int(match.group(1)))
    folded = []
    for pattern, idx in groups.items():
        if not idx:
            folded.append(pattern)
        elif len(idx) == 1:
            folded.append(pattern.replace("{}", str(idx[0])))
        else:
            folded.append(pattern.replace("{}", "{" + f"{min(idx)}...{max(idx)}" + "}"))
    return sorted(folded)


def load_state_dict_with_report(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str = "checkpoint",
    required_prefix: str = "",
    allow_partial: bool = False,
    hint: str = "",
) -> LoadReport:
    """Load what matches; every model tensor under ``required_prefix`` must be loaded.

    Raises :class:`IncompleteLoadError` listing missing / unexpected / mismatched keys when
    any required tensor is not in the file, or any shared key has another shape (the file
    was made for another method or size), unless ``allow_partial``. ``hint`` is added to the message
    (e.g. which method the file belongs to).
    """
    own = model.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    loadable = {
        k: v for k, v in state_dict.items() if k in own and tuple(v.shape) == tuple(own[k].shape)
    }
    required = [k for k in own if k.startswith(required_prefix)]
    report = LoadReport(
        loaded=list(loadable),
        missing=[k for k in own if k not in state_dict],
        unexpected=[k for k in state_dict if k not in own],
        mismatched=mismatched,
        required=len(required),
        required_loaded=sum(k in loadable for k in required),
    )
    if (report.required_loaded < report.required or mismatched) and not allow_partial:
        what = f"'{required_prefix.rstrip('.')}' tensors" if required_prefix else "tensors"
        raise IncompleteLoadError(
            f"{source}: loads {report.required_loaded} of the model's {report.required} {what}"
            f"{'; ' + hint if hint else ''} (allow_partial_load=true accepts a partial load)\n"
            + report.table()
        )
    model.load_state_dict(loadable, strict=False)
    return report
