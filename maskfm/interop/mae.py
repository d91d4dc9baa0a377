"""Original MAE checkpoints (facebookresearch/mae) <-> maskfm's ``MAE`` / any ``ViTEncoder``.

The released ``mae_pretrain_vit_{base,large,huge}.pth`` are ``{"model": state_dict}`` with the
encoder of ``models_mae.MaskedAutoencoderViT`` in timm's ViT names: ``cls_token``,
``pos_embed`` (fixed 2-D sin-cos, CLS row first), ``patch_embed.proj.*``,
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``. The full
pretraining state (the ``mae_visualize_*`` files, ``main_pretrain.py`` checkpoints) adds the
decoder: ``decoder_embed.*``, ``mask_token``, ``decoder_pos_embed``, ``decoder_blocks.N.*``,
``decoder_norm.*``, ``decoder_pred.*``. maskfm's ``ViTEncoder`` uses timm's names, so the
encoder only gains an ``encoder.`` prefix; the decoder maps one to one onto ``MAEDecoder``.
A bare state dict in the same names (a timm ViT, ``export.format=timm``) reads the same way.

Attention heads are not visible in the weights (``qkv`` is ``3D x D`` for any head count):
the composed config's ``model.num_heads`` must be the file's.
"""

from __future__ import annotations

import logging
import re
from typing import Any, cast

import torch
from torch import nn

from maskfm.interop.keymap import KeyTable, inverse, rename, rename_all, strip_module_prefix
from maskfm.interop.loading import LoadReport, load_state_dict_with_report

log = logging.getLogger(__name__)

ENCODER_MAP: KeyTable = (
    ("cls_token", "encoder.cls_token"),
    ("pos_embed", "encoder.pos_embed"),
    ("patch_embed.", "encoder.patch_embed."),
    ("blocks.", "encoder.blocks."),
    ("norm.", "encoder.norm."),
)
DECODER_MAP: KeyTable = (
    ("decoder_embed.", "decoder.embed."),
    ("mask_token", "decoder.mask_token"),
    ("decoder_pos_embed", "decoder.pos_embed"),
    ("decoder_blocks.", "decoder.blocks."),
    ("decoder_norm.", "decoder.norm."),
    ("decoder_pred.", "decoder.pred."),
)


def is_mae_state_dict(state_dict: dict) -> bool:
    """MAE's / timm's ViT signature: a patch-embedding conv and a first qkv projection."""
    keys = {str(k).removeprefix("module.") for k in state_dict}
    return "patch_embed.proj.weight" in keys and "blocks.0.attn.qkv.weight" in keys


def has_decoder(state_dict: dict) -> bool:
    return any(str(k).removeprefix("module.").startswith("decoder_") for k in state_dict)


def describe_vit(state_dict: dict[str, torch.Tensor]) -> str:
    """The sizes the weights show, for error messages: width, depth, patch, grid."""
    sd = strip_module_prefix(state_dict)
    proj = sd.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4:
        return ""
    depth = len({m.group(1) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    text = f"a ViT of width {proj.shape[0]}, depth {depth}, {proj.shape[2]} px patches, {proj.shape[1]} channels"
    pos = sd.get("pos_embed")
    if pos is not None and pos.ndim == 3:
        text += f", {pos.shape[1] - 1} patch positions"
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        text += f", mlp ratio {fc1.shape[0] / proj.shape[0]:g}"
    if has_decoder(sd) and "decoder_embed.weight" in sd:
        dec = len({m.group(1) for k in sd if (m := re.match(r"decoder_blocks\.(\d+)\.", k))})
        text += f"; decoder width {sd['decoder_embed.weight'].shape[0]}, depth {dec}"
    return text


def mae_to_maskfm(state_dict: dict[str, torch.Tensor], with_decoder: bool = True):
    """Rename MAE's keys to maskfm's ``MAE`` names; without ``with_decoder`` the decoder keys
    keep their names (unexpected in a model with no MAE decoder, e.g. M3AE)."""
    table = ENCODER_MAP + DECODER_MAP if with_decoder else ENCODER_MAP
    return rename(strip_module_prefix(state_dict), table)


def mae_state_dict(method: nn.Module, with_decoder: bool = False) -> dict[str, torch.Tensor]:
    """maskfm ``MAE`` (or any method whose ``encoder`` is a ``ViTEncoder``) -> MAE's names:
    the encoder as in ``mae_pretrain_vit_*.pth``, plus the decoder when ``with_decoder``."""
    encoder: nn.Module = cast(Any, method).encoder
    sd = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    if with_decoder:
        decoder = getattr(method, "decoder", None)
        from maskfm.nn.mae_decoder import MAEDecoder

        if not isinstance(decoder, MAEDecoder):
            raise ValueError(
                f"{type(method).__name__} has no MAE decoder to export (export.with_decoder=false)"
            )
        sd.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    return rename_all(sd, inverse(ENCODER_MAP + DECODER_MAP), "MAE's layout")


def load_mae_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    allow_partial: bool = False,
    label: str = "an original MAE checkpoint",
) -> LoadReport:
    """Load MAE-named weights into a maskfm method with a ``ViTEncoder`` encoder.

    Every encoder tensor must load; when the file also has a decoder and the method is MAE,
    every tensor of the method must (``allow_partial`` accepts fewer)."""
    from maskfm.methods.mae import MAE

    decoder = isinstance(model, MAE)
    required = "" if decoder and has_decoder(state_dict) else "encoder."
    shows = describe_vit(state_dict)
    report = load_state_dict_with_report(
        model,
        mae_to_maskfm(state_dict, with_decoder=decoder),
        source=source,
        required_prefix=required,
        allow_partial=allow_partial,
        hint=f"{label} loaded into {type(model).__name__}"
        + (f"; the file holds {shows} (model.* sizes must match)" if shows else ""),
    )
    log.info("Loaded %s into %s:\n%s", source, type(model).__name__, report.table())
    return report
