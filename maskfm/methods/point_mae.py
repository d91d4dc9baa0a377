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
from torch import nn

from maskfm.masking import Masker, RandomMasker, TokenLayout, gather_tokens
from maskfm.methods.output import MaskedModelingOutput
from maskfm.nn.chamfer import chamfer_l1, chamfer_l2
from maskfm.nn.point_transformer import PointPatchDecoder, PointPatchEncoder
from maskfm.tokens.group import PointGrouper, PointGroups

CHAMFER = {"cdl2": chamfer_l2, "cdl1": chamfer_l1}


class PointMAE(nn.Module):
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
        if loss not in CHAMFER:
            raise ValueError(f"loss must be one of {list(CHAMFER)}, got {loss!r}")
        self.masker = masker if masker is not None else RandomMasker(0.6)
        self.chamfer = CHAMFER[loss]
        self.grouper = PointGrouper(num_groups, group_size)
        self.encoder = PointPatchEncoder(embed_dim, depth, num_heads, drop_path_rate, pointnet_hidden)
        self.decoder = PointPatchDecoder(group_size, embed_dim, decoder_depth, decoder_num_heads, drop_path_rate)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def group(self, points: torch.Tensor) -> PointGroups:
        return self.grouper(points)

    def layout(self, groups: PointGroups) -> TokenLayout:
        return TokenLayout.points(groups.centers)

    def reconstruct(self, groups: PointGroups, mask: torch.Tensor, decoder: PointPatchDecoder,
                    prefix: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Encode visible patches (after optional prefix tokens), decode the hidden ones.

        Returns ``pred (B, H, M, 3)``, ``target (B, H, M, 3)`` and the decoder's pre-norm
        features of all tokens in original order ``(B, G, C)``.
        """
        latent, idx = self.encoder(groups.neighborhood, groups.centers, mask, prefix=prefix)
        n_prefix = 0 if prefix is None else prefix[0].shape[1]
        pred, feats = decoder(latent[:, n_prefix:], groups.centers, idx)
        target = gather_tokens(groups.neighborhood, idx.ids_masked)
        return pred, target, feats

    def forward_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Chamfer distance between each predicted and true hidden patch (batch of B*H sets)."""
        return self.chamfer(pred.flatten(0, 1), target.flatten(0, 1))

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> MaskedModelingOutput:
        groups = self.group(batch["points"])
        mask = self.masker(self.layout(groups), generator)
        pred, target, _ = self.reconstruct(groups, mask, self.decoder)
        loss = self.forward_loss(pred, target)
        return MaskedModelingOutput(loss=loss, parts={"recon": loss}, pred=pred, mask=mask,
                                    extras={"centers": groups.centers, "target": target})

    @torch.no_grad()
    def features(self, batch: dict) -> torch.Tensor:
        """``(B, G, C)`` encoder tokens of every patch, nothing hidden (for evaluation)."""
        groups = self.group(batch["points"])
        tokens, _ = self.encoder(groups.neighborhood, groups.centers)
        return tokens

    @torch.no_grad()
    def reconstruction_clouds(self, batch: dict, out: MaskedModelingOutput) -> dict[str, torch.Tensor]:
        """Point clouds ``(B, P, 3)`` to look at: input, visible patches, visible + predicted."""
        groups = self.group(batch["points"])
        b, g, m, _ = groups.neighborhood.shape
        absolute = groups.neighborhood + groups.centers[:, :, None]
        visible = absolute[~out.mask].reshape(b, -1, 3)
        hidden_centers = out.extras["centers"][out.mask].reshape(b, -1, 1, 3)
        predicted = (out.pred + hidden_centers).reshape(b, -1, 3)
        return {"input": batch["points"], "visible": visible,
                "reconstruction": torch.cat([visible, predicted], dim=1)}
