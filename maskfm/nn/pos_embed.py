"""Fixed sine-cosine positional embeddings (as MAE / MoCo v3)."""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``positions: (M,)`` -> ``(M, dim)``: half sines, half cosines of geometric frequencies."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding dim must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.to(torch.float64).reshape(-1)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def sincos_2d(dim: int, grid_size: tuple[int, int], cls_token: bool = False) -> torch.Tensor:
    """``(rows*cols [+1], dim)`` embedding of a row-major patch grid.

    As in MAE, the first half of the channels encodes the column (x) and the second half the
    row (y): MAE's ``meshgrid(grid_w, grid_h)`` puts w first, and we keep that order so our
    table is identical to MAE's (and to pretrained weights that store it).
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding dim must be divisible by 4, got {dim}")
    rows, cols = grid_size
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, c), sincos_1d(dim // 2, r)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb
