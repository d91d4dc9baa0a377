"""MAE's light decoder: mask tokens at fixed 2D sin-cos positions, a transformer, a
per-patch pixel head (facebookresearch/mae ``models_mae.py``), and the method pieces every
pixel-reconstructing ViT method shares (:class:`PixelReconstruction`). Used by MAE and by
M3AE's masked-image objective."""

from __future__ import annotations

import torch
from torch import nn

from maskfm.callbacks.render import pixel_reconstruction_panels
from maskfm.masking import restore_order
from maskfm.nn.pos_embed import sincos_2d
from maskfm.nn.vit import LayerNorm6, init_weights, transformer_blocks


class MAEDecoder(nn.Module):
    """Mask tokens + fixed positions -> transformer -> per-patch pixel prediction."""

    def __init__(
        self,
        grid_size: tuple[int, int],
        encoder_dim: int,
        out_dim: int,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos = sincos_2d(embed_dim, grid_size, cls_token=True)[None]
        self.pos_embed = nn.Parameter(pos, requires_grad=False)
        self.blocks = transformer_blocks(embed_dim, depth, num_heads, mlp_ratio)
        self.norm = LayerNorm6(embed_dim)
        self.pred = nn.Linear(embed_dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in (self.embed, self.blocks, self.norm, self.pred):
            m.apply(init_weights)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "mask_token"}

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """``latent: (B, 1 + V, De)`` (CLS first) -> ``(B, L, P)`` predictions in patch order."""
        x = self.embed(latent)
        cls, visible = x[:, :1], x[:, 1:]
        n_hidden = ids_restore.shape[1] - visible.shape[1]
        hidden = self.mask_token.expand(x.shape[0], n_hidden, -1)
        x = torch.cat([cls, restore_order(visible, hidden, ids_restore)], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]


class PixelReconstruction:
    """Mixin for methods whose ViT ``encoder`` reconstructs pixel patches (MAE, M3AE): frozen
    features of the whole picture and the pixel panels. ``panel_images`` says which pictures
    the prediction of a step belongs to (the batch's, unless the step swapped some)."""

    encoder: nn.Module
    patch_size: int
    grid_size: tuple[int, int]
    norm_pix_loss: bool
    media = ("panels",)

    @torch.no_grad()
    def features(self, batch: dict) -> torch.Tensor:
        """``(B, 1 + L, D)`` ViT tokens (CLS first) of the whole picture, nothing hidden."""
        return self.encoder(batch["image"], None)

    def panel_images(self, batch: dict, out) -> torch.Tensor:
        return batch["image"]

    @torch.no_grad()
    def reconstruction_panels(self, batch: dict, out) -> dict[str, torch.Tensor]:
        assert out.pred is not None and out.mask is not None, "pixel methods set pred and mask"
        return pixel_reconstruction_panels(
            self.panel_images(batch, out),
            out.pred,
            out.mask,
            self.patch_size,
            self.grid_size,
            self.norm_pix_loss,
        )
