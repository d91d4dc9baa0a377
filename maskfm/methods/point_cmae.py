"""Point-CMAE: Contrastive Masked AutoEncoder for point clouds (Ren et al., ACCV 2024).

Point-MAE with two independent random masks of the same ratio, one shared encoder, two
decoders of identical shape with separate weights, Chamfer-L2 on both branches, and a
contrastive constraint on the tokens hidden by **both** masks, computed on the decoders'
pre-norm features in original token order.

Two definitions of that constraint, side by side (``contrast``):

* ``paper`` (default): each doubly-hidden token against its own counterpart,
  ``mean_i (1 - cos(f1_i, f2_i))`` over tokens i hidden by both masks.
* ``released``: the released code's ``torch.bmm`` compares each doubly-hidden row i with
  **all** G tokens j of the other branch: ``mean_{i, j} (1 - cos(f1_i, f2_j) + 1e-8)``.

Weighting as released (``runner_pretrain.py``): ``1000 * (CD1 + CD2) + 1 * contrast``.
Each branch also prepends its own learned CLS token (``cls_token1/2``, ``cls_pos1/2``) to
its visible tokens, as released (their projection head feeds no loss there, so it is
omitted here).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from timm.layers.weight_init import trunc_normal_
from torch import nn

from maskfm.masking import Masker, RandomMasker
from maskfm.methods.contract import MaskedMethod
from maskfm.methods.output import MaskedModelingOutput
from maskfm.nn.point_patch_mae import PointPatchAutoencoder
from maskfm.nn.point_transformer import init_point_transformer

CONTRAST = ("paper", "released")


def double_mask_contrast(
    f1: torch.Tensor, f2: torch.Tensor, both: torch.Tensor, variant: str = "paper"
):
    """Contrastive constraint on doubly-hidden tokens.

    Args:
        f1, f2: ``(B, G, C)`` features of the two branches in original token order.
        both: ``(B, G)`` bool, tokens hidden by both masks.
        variant: ``paper`` (token i vs its counterpart i) or ``released`` (row i vs all j).
    """
    if variant not in CONTRAST:
        raise ValueError(f"contrast must be one of {CONTRAST}, got {variant!r}")
    f1, f2 = F.normalize(f1, dim=-1), F.normalize(f2, dim=-1)
    if variant == "paper":
        terms = (1.0 - (f1 * f2).sum(dim=-1)) * both  # [B, G]
        count = both.sum()
    else:
        cos = torch.bmm(f1, f2.transpose(1, 2))  # [B, G, G], all pairs
        rows = both[:, :, None].expand_as(cos)
        terms, count = (1.0 - cos + 1e-8) * rows, rows.sum()
    count, scale = global_count(count)
    if count == 0:
        return f1.sum() * 0.0  # no token is hidden twice: nothing to align
    return terms.sum() * scale / count


def global_count(count: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(count summed over data-parallel ranks, world size) while training; (count, 1) otherwise.

    DDP averages the ranks' gradients, so a mean over the global batch is each rank's sum
    times world size over the global count; dividing by the rank's own count would weight
    ranks by how many tokens they happened to hide twice. Only with gradients enabled:
    validation and pictures drawn by rank 0 alone must not wait for the others.
    """
    dist = torch.distributed
    if not (torch.is_grad_enabled() and dist.is_available() and dist.is_initialized()):
        return count, 1
    world = dist.get_world_size()
    if world == 1:
        return count, 1
    total = count.detach().clone()
    dist.all_reduce(total)
    return total, world


class PointCMAE(PointPatchAutoencoder, MaskedMethod):
    """Point-MAE's parts + a second mask and decoder + the double-mask contrastive constraint.

    Args:
        contrast: ``paper`` or ``released`` (see the module docstring).
        recon_weight, contrast_weight: 1000 and 1 as released.
        num_groups ... pointnet_hidden: the sizes, as :class:`~maskfm.methods.point_mae.PointMAE`.
    """

    # registered in __init__ with register_parameter
    cls_token1: nn.Parameter
    cls_pos1: nn.Parameter
    cls_token2: nn.Parameter
    cls_pos2: nn.Parameter

    def __init__(
        self,
        masker: Masker | None = None,
        contrast: str = "paper",
        recon_weight: float = 1000.0,
        contrast_weight: float = 1.0,
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
        self.masker = masker or RandomMasker(0.6)
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
        if contrast not in CONTRAST:
            raise ValueError(f"contrast must be one of {CONTRAST}, got {contrast!r}")
        self.contrast = contrast
        self.recon_weight, self.contrast_weight = recon_weight, contrast_weight
        self.decoder2 = copy.deepcopy(self.decoder)  # identical shape, its own weights
        self.decoder2.apply(init_point_transformer)
        trunc_normal_(self.decoder2.mask_token, std=0.02)
        width = self.encoder.embed_dim
        for name in ("cls_token1", "cls_pos1", "cls_token2", "cls_pos2"):
            self.register_parameter(
                name, nn.Parameter(trunc_normal_(torch.zeros(1, 1, width), std=0.02))
            )

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "cls_token1", "cls_token2"}

    def forward(
        self, batch: dict, generator: torch.Generator | None = None
    ) -> MaskedModelingOutput:
        groups = self.group(batch["points"])
        layout = self.layout(groups)
        mask1, mask2 = self.masker(layout, generator), self.masker(layout, generator)
        pred1, target1, feats1 = self.reconstruct(
            groups, mask1, self.decoder, (self.cls_token1, self.cls_pos1)
        )
        pred2, target2, feats2 = self.reconstruct(
            groups, mask2, self.decoder2, (self.cls_token2, self.cls_pos2)
        )
        recon1, recon2 = self.forward_loss(pred1, target1), self.forward_loss(pred2, target2)
        contrast = double_mask_contrast(feats1, feats2, mask1 & mask2, self.contrast)
        loss = self.recon_weight * (recon1 + recon2) + self.contrast_weight * contrast
        parts = {"recon1": recon1, "recon2": recon2, "contrast": contrast}
        return self.output(loss, parts, pred1, target1, mask1, groups)
