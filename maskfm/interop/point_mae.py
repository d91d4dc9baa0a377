"""Original Point-MAE checkpoints (``pretrain.pth`` of Pang-Yatian/Point-MAE) -> maskfm.

The file is ``{"base_model": state_dict, "optimizer": ..., "epoch": ...}``; keys carry a
``module.`` prefix when the run used ``nn.DataParallel`` (the released ``pretrain.pth`` has
209 such keys). The encoder sub-tree keeps its names; only the top-level prefixes move.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from maskfm.interop.checkpoint_file import CheckpointFileError, read_checkpoint
from maskfm.interop.loading import LoadReport, load_state_dict_with_report

log = logging.getLogger(__name__)

# original prefix -> maskfm prefix; first match wins
PREFIX_MAP = (
    ("MAE_encoder.", "encoder."),
    ("MAE_decoder.blocks.", "decoder.blocks.blocks."),
    ("MAE_decoder.norm.", "decoder.norm."),
    ("decoder_pos_embed.", "decoder.pos_embed."),
    ("increase_dim.", "decoder.head."),
    ("mask_token", "decoder.mask_token"),
)


def point_mae_filter_fn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original Point-MAE state dict to maskfm's ``PointMAE`` names."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        for old, new in PREFIX_MAP:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def is_original_checkpoint(checkpoint: dict) -> bool:
    return (
        isinstance(checkpoint, dict)
        and ("base_model" in checkpoint or "model" in checkpoint)
        and "state_dict" not in checkpoint
    )


def load_point_mae_checkpoint(
    model: nn.Module, path: str | Path, allow_partial: bool = False
) -> LoadReport:
    """Load an original Point-MAE checkpoint file into a maskfm ``PointMAE``; log the report.

    Every encoder tensor must be in the file (``allow_partial`` accepts fewer)."""
    path = Path(path)
    # The originals pickle plain dicts of tensors and numbers; weights_only refuses anything else.
    checkpoint = read_checkpoint(path, expected="an original Point-MAE checkpoint (pretrain.pth)")
    if not is_original_checkpoint(checkpoint):
        raise CheckpointFileError(
            f"{path}: not an original Point-MAE checkpoint (no 'base_model' or 'model' key)"
        )
    state_dict = checkpoint.get("base_model", checkpoint.get("model"))
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise CheckpointFileError(f"{path}: 'base_model' is not a state dict of tensors")
    report = load_state_dict_with_report(
        model,
        point_mae_filter_fn(state_dict),
        source=str(path),
        required_prefix="encoder.",
        allow_partial=allow_partial,
        hint=f"an original Point-MAE checkpoint loaded into {type(model).__name__}",
    )
    log.info("Loaded %s into %s:\n%s", path, type(model).__name__, report.table())
    return report
