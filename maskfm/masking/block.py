"""Block masking: hide the tokens nearest to a few random centres.

On a 2D patch grid the distance is a per-block scaled Chebyshev distance, so each block is
an axis-aligned rectangle of random aspect ratio (BEiT-like blocks, exact count). For 3D
positions it is the Euclidean distance to a random valid token, which reproduces
Point-MAE/Point-BERT's "mask the nearest centres to a random seed point".
"""

from __future__ import annotations

import math

import torch

from maskfm.masking.base import Masker
from maskfm.masking.layout import GRID_2D, POINTS_3D, TokenLayout


class BlockMasker(Masker):
    """Hide ``round(ratio * valid)`` tokens in ``num_blocks`` contiguous blocks.

    Args:
        ratio: fraction of valid tokens to hide.
        num_blocks: how many block centres per sample.
        max_aspect: 2D only; block aspect ratios are drawn log-uniformly in
            ``[1 / max_aspect, max_aspect]``.
    """

    supported_kinds = (GRID_2D, POINTS_3D)

    def __init__(self, ratio: float, num_blocks: int = 1, max_aspect: float = 3.0) -> None:
        super().__init__(ratio)
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if max_aspect < 1.0:
            raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
        self.num_blocks = int(num_blocks)
        self.max_aspect = float(max_aspect)

    def scores(self, layout: TokenLayout, generator: torch.Generator | None) -> torch.Tensor:
        b, n, _ = layout.positions.shape
        dev = layout.device
        # Centres: random valid tokens of each sample.
        pick = torch.rand(b, self.num_blocks, n, generator=generator, device=dev)
        pick = pick.masked_fill(~layout.valid[:, None, :], -1.0)
        centre_idx = pick.argmax(dim=-1)  # [B, K]
        pos = layout.positions
        centres = torch.gather(pos, 1, centre_idx[..., None].expand(-1, -1, pos.shape[-1]))
        diff = pos[:, None, :, :] - centres[:, :, None, :]  # [B, K, N, D]
        if layout.kind == GRID_2D:
            log_aspect = torch.rand(b, self.num_blocks, 1, generator=generator, device=dev) * 2 - 1
            aspect = torch.exp(log_aspect * math.log(self.max_aspect))
            scale = torch.cat([aspect.sqrt(), 1.0 / aspect.sqrt()], dim=-1)  # [B, K, 2]
            dist = (diff.abs() / scale[:, :, None, :]).amax(dim=-1)  # [B, K, N]
        else:
            dist = diff.norm(dim=-1)
        return -dist.amin(dim=1)  # nearest-to-any-centre is hidden first
