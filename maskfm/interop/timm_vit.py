"""maskfm ``ViTEncoder`` -> a weight file timm's ``VisionTransformer`` loads strictly.

maskfm's ViT already uses timm's names and timm's ``Block`` (qkv bias, LayerNorm eps 1e-6,
exact GELU, CLS token with its position, pre-norm blocks, final norm over every token), so
the file is the encoder's state dict as it is. timm builds the same network from
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...,
num_classes=0), **kwargs)``; ``forward_features`` then equals maskfm's ``encoder(images)``
(``(B, 1 + L, D)``, CLS first) and ``model(images)`` is the normed CLS token
(``global_pool='token'``). ``num_classes=0`` in the overlay matters: when the model's
class count differs from the pretrained config's, timm drops the head keys and loads
*non-strictly*, so a missing tensor would pass unnoticed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from maskfm.nn.vit import VIT_SIZES, ViTEncoder


def timm_model_args(encoder: ViTEncoder) -> tuple[str, dict[str, Any]]:
    """(timm model name, keyword arguments) that build ``encoder``'s architecture.

    The name is timm's registered ``vit_<size>_patch<p>_<img>`` when one fits; every size is
    passed explicitly anyway, so a custom size builds from the same name.
    """
    import timm

    block: Any = encoder.blocks[0]
    heads = int(block.attn.num_heads)
    depth = len(encoder.blocks)
    height, width = (g * encoder.patch_size for g in encoder.grid_size)
    img_size: int | list[int] = height if height == width else [height, width]
    kwargs: dict[str, Any] = dict(
        img_size=img_size,
        patch_size=encoder.patch_size,
        in_chans=int(encoder.patch_embed.proj.in_channels),
        embed_dim=encoder.embed_dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=block.mlp.fc1.out_features / encoder.embed_dim,
        qkv_bias=True,
        class_token=True,
        global_pool="token",
        num_classes=0,
    )
    size = next(
        (n for n, dims in VIT_SIZES.items() if dims == (encoder.embed_dim, depth, heads)), "base"
    )
    name = f"vit_{size}_patch{encoder.patch_size}_{height}"
    if not timm.is_model(name):
        name = "vit_base_patch16_224"  # any ViT entry point: the kwargs set every size
    return name, kwargs


def export_timm(encoder: ViTEncoder, path: str | Path) -> tuple[Path, str, dict[str, Any]]:
    """Write the encoder's state dict (``.safetensors``, or a torch ``.pth``/``.bin``
    state dict); returns (path, timm model name, kwargs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"format": "pt"})
    else:
        torch.save(state, path)
    name, kwargs = timm_model_args(encoder)
    return path, name, kwargs


def timm_load_snippet(path: Path, name: str, kwargs: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return (
        "import timm\n"
        f"model = timm.create_model({name!r}, pretrained=True, "
        f"pretrained_cfg_overlay=dict(file={str(path)!r}, num_classes=0), {args})\n"
        "tokens = model.forward_features(images)  # (B, 1 + L, D), CLS first: maskfm's encoder(images)"
    )
