"""Point-MAE: Masked Autoencoders for Point Cloud Self-supervised Learning (Pang et al., ECCV 2022).

As released (``models/Point_MAE.py``, ``cfgs/pretrain.yaml``): 1024 points are grouped into
64 patches of 32 points (FPS centres + kNN, centred); 60 % of the patches are hidden at
random (exactly ``int(0.6 * 64) = 38``); a 12 x 384 x 6-head transformer encodes the visible
patches only; a 4-block decoder gets mask tokens at the hidden centres and a ``Conv1d`` head
predicts 32 x 3 points per hidden patch; the loss is Chamfer-L2 against the hidden patches.

Dimension letters: B batch, N points, G groups, M points per group, H hidden groups.
"""

from __future__ import annotations

import torch

from maskfm.masking import Masker, RandomMasker
from maskfm.methods.contract import MaskedMethod
from maskfm.methods.output import MaskedModelingOutput
from maskfm.nn.point_patch_mae import CHAMFER, PointPatchAutoencoder

__all__ = ["CHAMFER", "PointMAE"]


class PointMAE(PointPatchAutoencoder, MaskedMethod):
    """Masked autoencoder over point patches.

    Args:
        masker: which patches to hide; default random 60 %.
        num_groups, group_size: patches per cloud and points per patch (64 x 32 for 1024).
        embed_dim, depth, num_heads, drop_path_rate: encoder (384 / 12 / 6 / 0.1).
        decoder_depth, decoder_num_heads: decoder (4 / 6; width = embed_dim).
        loss: ``cdl2`` (Chamfer-L2, the released setting) or ``cdl1``.
        pointnet_hidden: mini-PointNet widths, (128, 256, 512) as released.
    """

    def __init__(
        self,
        masker: Masker | None = None,
        num_groups: int = 64,
        group_size: int = 32,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        drop_path_rate: float = 0.1,
        decoder_depth: int = 4,
        decoder_num_heads: int = 6,
        loss: str = "cdl2",
        pointnet_hidden: tuple[int, int, int] = (128, 256, 512),
    ) -> None:
        super().__init__()
        self.masker = masker if masker is not None else RandomMasker(0.6)
        self.build_point_patch_parts(
            num_groups,
            group_size,
            embed_dim,
            depth,
            num_heads,
            drop_path_rate,
            decoder_depth,
            decoder_num_heads,
            loss,
            pointnet_hidden,
        )

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def forward(
        self, batch: dict, generator: torch.Generator | None = None
    ) -> MaskedModelingOutput:
        groups = self.group(batch["points"])
        mask = self.masker(self.layout(groups), generator)
        pred, target, _ = self.reconstruct(groups, mask, self.decoder)
        loss = self.forward_loss(pred, target)
        return self.output(loss, {"recon": loss}, pred, target, mask, groups)
