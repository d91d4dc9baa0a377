"""Which layout a weight file is in: chosen by ``ckpt_format``, or recognised by a signature.

``auto`` never guesses from a single key name such as ``model`` (MAE and Point-MAE both
use it): each layout has a signature on the key set, and a file that matches none, or more
than one, is refused with a message naming the file and the ``ckpt_format`` to pass.

==========  ===============================================================================
format      signature
==========  ===============================================================================
maskfm      a dict with a ``state_dict`` dict (Lightning checkpoint of ``maskfm.train``)
mae         ``{"model": sd}`` or a bare ``sd`` with ``patch_embed.proj.weight`` and
            ``blocks.0.attn.qkv.weight`` (MAE's releases; timm ViT files, .safetensors too)
point_mae   ``{"base_model": sd}`` / ``{"model": sd}`` / ``sd`` whose keys start with
            ``MAE_encoder.`` / ``MAE_decoder.`` (Point-MAE, Point-CMAE; ``module.`` allowed)
hf_vitmae   a directory whose ``config.json`` says ``model_type: vit_mae``
==========  ===============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maskfm.errors import UserInputError
from maskfm.interop.checkpoint_file import CheckpointFileError, read_checkpoint
from maskfm.interop.mae import is_mae_state_dict
from maskfm.interop.point_mae import is_point_mae_state_dict

CKPT_FORMATS = ("auto", "maskfm", "mae", "hf_vitmae", "point_mae")
LABELS = {
    "maskfm": "maskfm",
    "mae": "original MAE",
    "hf_vitmae": "Hugging Face ViTMAE",
    "point_mae": "original Point-MAE",
}
EXPECTED = {
    "auto": "a maskfm checkpoint (.ckpt), an original MAE or Point-MAE checkpoint (.pth) "
    "or a Hugging Face ViTMAE directory",
    "maskfm": "a maskfm checkpoint (.ckpt)",
    "mae": "an original MAE checkpoint (mae_pretrain_vit_*.pth) or a timm ViT state dict",
    "point_mae": "an original Point-MAE checkpoint (pretrain.pth)",
    "hf_vitmae": "a Hugging Face ViTMAE directory (config.json + model.safetensors)",
}


class UnknownFormatError(CheckpointFileError):
    """A weight file matches no layout, or several."""


@dataclass
class WeightFile:
    """A weight file (or HF directory) and the layout it is read in."""

    path: Path
    format: str
    checkpoint: Any = None  # what the file holds; None for a Hugging Face directory

    @property
    def label(self) -> str:
        return LABELS[self.format]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors of an original (mae / point_mae) file, in the file's names."""
        ckpt = self.checkpoint
        matches = {"mae": is_mae_state_dict, "point_mae": is_point_mae_state_dict}[self.format]
        for candidate in _inner_state_dicts(ckpt):
            if matches(candidate):
                return candidate
        raise AssertionError(f"{self.path} matched the {self.format} signature")


def _tensors(d: dict) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def _inner_state_dicts(checkpoint: Any) -> list[dict[str, torch.Tensor]]:
    """The state dicts an original file may hold: ``base_model``, ``model``, or itself."""
    if not isinstance(checkpoint, dict):
        return []
    inner = [checkpoint.get("base_model"), checkpoint.get("model"), checkpoint]
    return [d for d in inner if isinstance(d, dict) and _tensors(d)]


def signatures(checkpoint: Any) -> list[str]:
    """Every layout whose signature ``checkpoint`` matches."""
    if not isinstance(checkpoint, dict):
        return []
    found = []
    if isinstance(checkpoint.get("state_dict"), dict):
        found.append("maskfm")
    candidates = _inner_state_dicts(checkpoint)
    if any(is_mae_state_dict(c) for c in candidates):
        found.append("mae")
    if any(is_point_mae_state_dict(c) for c in candidates):
        found.append("point_mae")
    return found


def describe(checkpoint: Any) -> str:
    if not isinstance(checkpoint, dict):
        return f"a {type(checkpoint).__name__}"
    keys = list(checkpoint)
    text = "keys " + ", ".join(map(str, keys[:6])) + (", ..." if len(keys) > 6 else "")
    for key in ("model", "base_model"):
        inner = checkpoint.get(key)
        if isinstance(inner, dict) and inner:
            sub = list(inner)
            text += (
                f"; {key!r} holds "
                + ", ".join(map(str, sub[:4]))
                + (", ..." if len(sub) > 4 else "")
            )
    return text


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise CheckpointFileError(f"{path}: not a readable safetensors file ({e})") from e


def open_weights(path: str | Path, ckpt_format: str = "auto") -> WeightFile:
    """Read ``path`` as data (weights_only / safetensors / JSON) and settle its layout."""
    if ckpt_format not in CKPT_FORMATS:
        raise UserInputError(
            f"ckpt_format={ckpt_format!r}: expected one of {', '.join(CKPT_FORMATS)}"
        )
    path = Path(path).expanduser()
    if path.is_dir():
        if ckpt_format not in ("auto", "hf_vitmae"):
            raise CheckpointFileError(
                f"{path}: a directory; ckpt_format={ckpt_format} expects {EXPECTED[ckpt_format]}"
            )
        from maskfm.interop.hf_vitmae import read_hf_config

        read_hf_config(path)
        return WeightFile(path, "hf_vitmae")
    if ckpt_format == "hf_vitmae":
        raise CheckpointFileError(
            f"{path}: not a directory; ckpt_format=hf_vitmae expects {EXPECTED['hf_vitmae']}"
        )
    if path.suffix == ".safetensors" and path.is_file():
        checkpoint: Any = _read_safetensors(path)
    else:
        checkpoint = read_checkpoint(path, expected=EXPECTED[ckpt_format])
    found = signatures(checkpoint)
    if ckpt_format != "auto":
        if ckpt_format not in found:
            looks = f" (it looks like: {', '.join(found)})" if found else ""
            raise UnknownFormatError(
                f"{path}: ckpt_format={ckpt_format} but the file is not {EXPECTED[ckpt_format]}{looks}; "
                f"it holds {describe(checkpoint)}"
            )
        return WeightFile(path, ckpt_format, checkpoint)
    if len(found) == 1:
        return WeightFile(path, found[0], checkpoint)
    if not found:
        raise UnknownFormatError(
            f"{path}: not a layout maskfm recognises ({EXPECTED['auto']}); it holds "
            f"{describe(checkpoint)}. If it is one of these, pass ckpt_format="
            + "|".join(CKPT_FORMATS[1:])
        )
    raise UnknownFormatError(
        f"{path}: ambiguous, it matches the {' and the '.join(found)} layouts ({describe(checkpoint)}); "
        f"pass ckpt_format={'|'.join(found)} to choose"
    )
