"""Loading a state dict with a readable report (missing / unexpected / mismatched keys)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a model."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model

    def table(self) -> str:
        """Key | status lines, repeated layers folded as ``blocks.{0...11}.x``."""
        lines = [f"loaded {len(self.loaded)} tensors"]
        for status, keys in (("MISSING", self.missing), ("UNEXPECTED", self.unexpected)):
            for key in fold_layer_indices(keys):
                lines.append(f"  {status:<10} {key}")
        return "\n".join(lines)


def fold_layer_indices(keys: list[str]) -> list[str]:
    """``["b.0.w", "b.1.w", "b.2.w"]`` -> ``["b.{0...2}.w"]`` (same key up to one index)."""
    groups: dict[str, list[int]] = {}
    for key in keys:
        match = re.search(r"\.(\d+)\.", key)
        if match is None:
            groups.setdefault(key, [])
            continue
        pattern = key[: match.start()] + ".{}." + key[match.end():]
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


def load_state_dict_with_report(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> LoadReport:
    """Load what matches; raise if any shared key has a different shape.

    Shape mismatches are errors, never silently skipped: they mean the checkpoint was made
    for another architecture (a different width, group size, ...).
    """
    own = model.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if mismatched:
        raise ValueError(f"{source}: {len(mismatched)} tensors have the wrong shape:\n  " + "\n  ".join(mismatched))
    result = model.load_state_dict(state_dict, strict=False)
    loaded = [k for k in state_dict if k in own]
    return LoadReport(loaded, list(result.missing_keys), list(result.unexpected_keys))
