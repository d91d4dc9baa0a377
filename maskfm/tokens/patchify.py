"""Image <-> patch-token conversion.

``imgs: (B, C, H, W)`` <-> ``patches: (B, L, p*p*C)`` with ``L = (H/p) * (W/p)`` in row-major
order; each patch is flattened as ``(p, p, C)`` (row, column, channel), as MAE does.
"""

from __future__ import annotations

import torch


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, L, p*p*C)``. H and W must be multiples of ``patch_size``."""
    b, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size ({h}x{w}) must be divisible by the patch size {p}")
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int]) -> torch.Tensor:
    """``(B, L, p*p*C)`` -> ``(B, C, H, W)`` for a ``grid_size = (H/p, W/p)`` grid."""
    b, n, d = patches.shape
    gh, gw = grid_size
    p = patch_size
    if n != gh * gw or d % (p * p):
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not fit a {gh}x{gw} grid of {p}x{p} patches"
        )
    c = d // (p * p)
    x = patches.reshape(b, gh, gw, p, p, c)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(b, c, gh * p, gw * p)
