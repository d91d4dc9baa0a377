"""Original Point-MAE / Point-CMAE checkpoints <-> maskfm's ``PointMAE`` / ``PointCMAE``.

The originals save ``{"base_model": state_dict, "optimizer": ..., "epoch": ...}``
(``tools/builder.py``); keys carry a ``module.`` prefix when the run used ``nn.DataParallel``
(the released Point-MAE ``pretrain.pth`` has 209 such keys). The encoder sub-tree keeps its
names under ``MAE_encoder.``; only the top-level prefixes move. Point-CMAE
(``models/Point_CMAE.py``) adds a second decoder (``MAE_decoder_``, ``increase_dim_``,
``decoder_pos_embed2``, ``mask_token2``) and two CLS tokens inside ``MAE_encoder``; its
``MAE_encoder.proj_cls`` head has no maskfm counterpart and is reported as unexpected.
Both originals' fine-tuning loaders read ``MAE_encoder.*`` only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from maskfm.interop.checkpoint_file import CheckpointFileError, read_checkpoint
from maskfm.interop.keymap import KeyTable, inverse, rename, rename_all, strip_module_prefix
from maskfm.interop.loading import LoadReport, load_state_dict_with_report

log = logging.getLogger(__name__)

# original key -> maskfm key (see maskfm.interop.keymap for the matching rules)
PREFIX_MAP: KeyTable = (
    ("MAE_encoder.", "encoder."),
    ("MAE_decoder.blocks.", "decoder.blocks.blocks."),
    ("MAE_decoder.norm.", "decoder.norm."),
    ("decoder_pos_embed.", "decoder.pos_embed."),
    ("increase_dim.", "decoder.head."),
    ("mask_token", "decoder.mask_token"),
)

CMAE_PREFIX_MAP: KeyTable = (
    *((f"MAE_encoder.{n}", n) for n in ("cls_token1", "cls_pos1", "cls_token2", "cls_pos2")),
    ("MAE_encoder.", "encoder."),
    ("MAE_decoder.blocks.", "decoder.blocks.blocks."),
    ("MAE_decoder.norm.", "decoder.norm."),
    ("MAE_decoder_.blocks.", "decoder2.blocks.blocks."),
    ("MAE_decoder_.norm.", "decoder2.norm."),
    ("decoder_pos_embed1.", "decoder.pos_embed."),
    ("decoder_pos_embed2.", "decoder2.pos_embed."),
    ("increase_dim.", "decoder.head."),
    ("increase_dim_.", "decoder2.head."),
    ("mask_token1", "decoder.mask_token"),
    ("mask_token2", "decoder2.mask_token"),
)


def is_point_mae_state_dict(state_dict: dict) -> bool:
    """The originals' signature: Point-MAE/Point-CMAE module names at the top level."""
    return any(
        str(k).removeprefix("module.").startswith(("MAE_encoder.", "MAE_decoder.", "MAE_decoder_."))
        for k in state_dict
    )


def is_cmae_layout(state_dict: dict) -> bool:
    keys = {str(k).removeprefix("module.") for k in state_dict}
    return "mask_token1" in keys or any(k.startswith("MAE_decoder_.") for k in keys)


def point_mae_filter_fn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original Point-MAE (or Point-CMAE) state dict to maskfm's names."""
    state_dict = strip_module_prefix(state_dict)
    return rename(state_dict, CMAE_PREFIX_MAP if is_cmae_layout(state_dict) else PREFIX_MAP)


def original_state_dict(method: nn.Module) -> dict[str, torch.Tensor]:
    """maskfm ``PointMAE`` / ``PointCMAE`` -> the original repository's ``base_model`` keys
    (no ``module.`` prefix, as a DDP run saves them); every tensor is named."""
    from maskfm.methods.point_cmae import PointCMAE

    table = CMAE_PREFIX_MAP if isinstance(method, PointCMAE) else PREFIX_MAP
    return rename_all(method.state_dict(), inverse(table), f"the {type(method).__name__} layout")


def export_point_mae_original(method: nn.Module, path: str | Path) -> Path:
    """Write ``{"base_model": ..., "epoch": 0}`` as the originals' ``tools/builder.py`` does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"base_model": original_state_dict(method), "epoch": 0}, path)
    return path


def original_state_dict_of(checkpoint: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside an original checkpoint (``base_model``, or ``model`` as the
    originals' ``load_model`` also accepts), checked to be tensors in the originals' names."""
    if not isinstance(checkpoint, dict):
        raise CheckpointFileError(f"{path}: not an original Point-MAE checkpoint (not a dict)")
    state_dict = checkpoint.get("base_model", checkpoint.get("model"))
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise CheckpointFileError(f"{path}: 'base_model' is not a state dict of tensors")
    if not is_point_mae_state_dict(state_dict):
        shown = ", ".join(map(str, list(state_dict)[:4]))
        raise CheckpointFileError(
            f"{path}: not an original Point-MAE checkpoint (no MAE_encoder./MAE_decoder. keys; "
            f"it holds {shown}, ...)"
        )
    return state_dict


def load_point_mae_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, allow_partial: bool = False
) -> LoadReport:
    """Load an original state dict into a maskfm point method; every encoder tensor must
    load (``allow_partial`` accepts fewer)."""
    layout = "Point-CMAE" if is_cmae_layout(state_dict) else "Point-MAE"
    report = load_state_dict_with_report(
        model,
        point_mae_filter_fn(state_dict),
        source=source,
        required_prefix="encoder.",
        allow_partial=allow_partial,
        hint=f"an original {layout} checkpoint loaded into {type(model).__name__}",
    )
    log.info("Loaded %s into %s:\n%s", source, type(model).__name__, report.table())
    return report


def load_point_mae_checkpoint(
    model: nn.Module, path: str | Path, allow_partial: bool = False
) -> LoadReport:
    """Load an original Point-MAE/Point-CMAE checkpoint file into a maskfm point method."""
    path = Path(path)
    # The originals pickle plain dicts of tensors and numbers; weights_only refuses anything else.
    checkpoint = read_checkpoint(path, expected="an original Point-MAE checkpoint (pretrain.pth)")
    state_dict = original_state_dict_of(checkpoint, path)
    return load_point_mae_state_dict(model, state_dict, str(path), allow_partial)
