"""MAE: Masked Autoencoders Are Scalable Vision Learners (He et al., CVPR 2022).

Faithful to facebookresearch/mae ``models_mae.py``: a ViT encoder sees only the visible
patches; a light transformer decoder (512 wide, 8 deep, 16 heads) gets the latent tokens
plus mask tokens at fixed 2D sin-cos positions and predicts the pixels of every patch; the
loss is the per-patch-normalised pixel MSE on hidden patches only (``norm_pix_loss``).

Dimension letters: B batch, L patches, V visible patches, D width, P = patch*patch*C.
"""

from __future__ import annotations

import torch

from maskfm.masking import Masker, RandomMasker, TokenLayout, mask_indices
from maskfm.methods.contract import MaskedMethod
from maskfm.methods.output import MaskedModelingOutput
from maskfm.nn.losses import masked_mse, pixel_target
from maskfm.nn.mae_decoder import MAEDecoder, PixelReconstruction
from maskfm.nn.vit import VIT_SIZES, ViTEncoder


class MAE(PixelReconstruction, MaskedMethod):
    """Masked autoencoder with a ViT encoder.

    Args:
        masker: which patches to hide; default random 75 %.
        size: ``tiny | small | base | large | huge`` sets (embed_dim, depth, num_heads);
            explicit ``embed_dim``/``depth``/``num_heads`` override it.
        decoder_embed_dim, decoder_depth, decoder_num_heads: MAE's 512 / 8 / 16 by default.
        norm_pix_loss: predict per-patch normalised pixels (MAE's released setting).
    """

    encoder: ViTEncoder

    def __init__(
        self,
        masker: Masker | None = None,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        size: str = "base",
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        norm_pix_loss: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if size not in VIT_SIZES:
            raise ValueError(f"unknown ViT size {size!r}; choose one of {list(VIT_SIZES)}")
        d, n, h = VIT_SIZES[size]
        self.masker = masker if masker is not None else RandomMasker(0.75)
        self.patch_size = patch_size
        self.norm_pix_loss = norm_pix_loss
        self.encoder = ViTEncoder(
            img_size,
            patch_size,
            in_chans,
            embed_dim or d,
            depth or n,
            num_heads or h,
            mlp_ratio,
            drop_path_rate,
        )
        self.grid_size = self.encoder.grid_size
        self.decoder = MAEDecoder(
            self.grid_size,
            self.encoder.embed_dim,
            patch_size * patch_size * in_chans,
            decoder_embed_dim,
            decoder_depth,
            decoder_num_heads,
            mlp_ratio,
        )

    def no_weight_decay(self) -> set[str]:
        enc = {f"encoder.{k}" for k in self.encoder.no_weight_decay()}
        return enc | {f"decoder.{k}" for k in self.decoder.no_weight_decay()}

    def layout(self, batch_size: int, device: torch.device) -> TokenLayout:
        return TokenLayout.grid(batch_size, *self.grid_size, device=device)

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor):
        """Encode the visible patches; returns ``(latent (B, 1+V, D), MaskIndices)``."""
        idx = mask_indices(mask)
        return self.encoder(imgs, idx.ids_keep), idx

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent, ids_restore)

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """``(B, L, P)`` pixel targets, per-patch normalised when ``norm_pix_loss``."""
        return pixel_target(imgs, self.patch_size, self.norm_pix_loss)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor):
        return masked_mse(pred, self.target(imgs), mask)

    def forward(
        self, batch: dict, generator: torch.Generator | None = None
    ) -> MaskedModelingOutput:
        imgs = batch["image"]
        mask = self.masker(self.layout(imgs.shape[0], imgs.device), generator)
        latent, idx = self.forward_encoder(imgs, mask)
        pred = self.forward_decoder(latent, idx.ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return MaskedModelingOutput(loss=loss, parts={"recon": loss}, pred=pred, mask=mask)
