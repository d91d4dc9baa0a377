"""Vision Transformer encoder that runs on a subset of patch tokens.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.N``, ``norm``) so an encoder state dict loads into timm directly.
Blocks are timm's; we do not write our own attention.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import torch
from timm.layers.patch_embed import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from maskfm.masking.ops import gather_tokens
from maskfm.nn.pos_embed import sincos_2d

# (embed_dim, depth, num_heads) of the standard ViT sizes.
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}

LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)


def transformer_blocks(
    dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float = 0.0
) -> nn.ModuleList:
    """``depth`` timm pre-norm blocks with qkv bias and a linear drop-path ramp."""
    rates = torch.linspace(0, drop_path_rate, depth).tolist() if depth else []
    return nn.ModuleList(
        Block(
            dim,
            num_heads,
            mlp_ratio,
            qkv_bias=True,
            drop_path=r,
            norm_layer=cast(type[nn.Module], LayerNorm6),
        )  # timm types it as a class; a partial works
        for r in rates
    )


def init_weights(module: nn.Module) -> None:
    """MAE's init: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViTEncoder(nn.Module):
    """ViT with a CLS token and fixed 2D sin-cos positions.

    Args:
        img_size, patch_size, in_chans: input geometry; ``img_size`` may be an int or (H, W).
        embed_dim, depth, num_heads, mlp_ratio: transformer size.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size: tuple[int, int] = tuple(self.patch_embed.grid_size)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False
        )
        self.blocks = transformer_blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path_rate)
        self.norm = LayerNorm6(embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.pos_embed.data.copy_(sincos_2d(self.embed_dim, self.grid_size, cls_token=True)[None])
        w = self.patch_embed.proj.weight.data  # init like nn.Linear, not nn.Conv2d (MAE)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        self.blocks.apply(init_weights)
        self.norm.apply(init_weights)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def forward(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode ``imgs: (B, C, H, W)``, keeping only patches ``ids_keep: (B, V)`` if given.

        Returns ``(B, 1 + V, D)`` normed tokens, the CLS token first (V = all patches when
        ``ids_keep`` is None).
        """
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """All tokens of an unmasked image, ``(B, 1 + L, D)`` (timm's protocol)."""
        return self(imgs)
