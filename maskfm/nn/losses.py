"""Reconstruction losses."""

from __future__ import annotations

import torch

from maskfm.tokens.patchify import patchify


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalisation of MAE's ``norm_pix_loss``: ``(x - mean) / sqrt(var + eps)``.

    ``target: (B, L, D)``; mean and (unbiased) variance are over the last dimension, as MAE.
    """
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per token, averaged over hidden tokens only.

    Args:
        pred, target: ``(B, L, D)``.
        mask: ``(B, L)`` bool, True = hidden (the tokens that count).
    """
    per_token = ((pred - target) ** 2).mean(dim=-1)  # [B, L]
    weight = mask.to(per_token.dtype)
    denom = weight.sum()
    if denom == 0:
        raise ValueError("masked_mse: the mask hides no token, the loss is undefined")
    return (per_token * weight).sum() / denom


def pixel_target(imgs: torch.Tensor, patch_size: int, norm_pix: bool) -> torch.Tensor:
    """``(B, L, p*p*C)`` pixels of each patch, per-patch normalised when ``norm_pix`` (MAE's
    ``norm_pix_loss``); the target of MAE and of M3AE's masked-image objective."""
    target = patchify(imgs, patch_size)
    return normalize_patches(target) if norm_pix else target
