"""Shared helpers to split tokens by a mask and put predictions back in order.

Conventions (as MAE): ``mask: (B, N)`` bool, True = hidden. ``ids_shuffle`` lists, per sample,
the visible tokens first and then the hidden ones, each group in original order;
``ids_restore`` is its inverse permutation, so ``gather(shuffled, ids_restore)`` restores
the original order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class MaskIndices(NamedTuple):
    """Index tensors derived from a mask; all ``(B, ·)`` long tensors."""

    ids_keep: torch.Tensor  # (B, V) visible tokens, original order
    ids_masked: torch.Tensor  # (B, H) hidden tokens, original order
    ids_restore: torch.Tensor  # (B, N) inverse of cat([ids_keep, ids_masked])


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``x: (B, N, *)``, ``ids: (B, K)`` -> ``(B, K, *)``."""
    index = ids.reshape(*ids.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, index)


def mask_indices(mask: torch.Tensor) -> MaskIndices:
    """Split a mask into visible / hidden index lists.

    Every sample must hide the same number of tokens (maskers guarantee this when samples
    have the same number of valid tokens); otherwise the visible tokens cannot form a dense
    batch and a ValueError says which counts differ.
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a (B, N) bool tensor, got {mask.dtype} {tuple(mask.shape)}")
    counts = mask.sum(dim=1)
    if (counts != counts[0]).any():
        raise ValueError(
            f"every sample must hide the same number of tokens to batch visible tokens, "
            f"got hidden counts {counts.tolist()}"
        )
    ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    n_hidden = int(counts[0]) if mask.shape[0] else 0
    n_keep = mask.shape[1] - n_hidden
    return MaskIndices(ids_shuffle[:, :n_keep], ids_shuffle[:, n_keep:], ids_restore)


def restore_order(
    visible: torch.Tensor, hidden: torch.Tensor, ids_restore: torch.Tensor
) -> torch.Tensor:
    """Concatenate visible and hidden-token features and put them back in original order.

    Args:
        visible: ``(B, V, C)`` features of the visible tokens (``ids_keep`` order).
        hidden: ``(B, H, C)`` features for the hidden tokens, e.g. expanded mask tokens.
        ids_restore: ``(B, V + H)`` from :func:`mask_indices`.
    """
    return gather_tokens(torch.cat([visible, hidden], dim=1), ids_restore)


def scatter_tokens(
    values: torch.Tensor, ids: torch.Tensor, num_tokens: int, fill=0.0
) -> torch.Tensor:
    """Place ``values: (B, K, *)`` at token indices ``ids: (B, K)`` of a ``(B, N, *)`` tensor."""
    out = values.new_full((values.shape[0], num_tokens, *values.shape[2:]), fill)
    index = ids.reshape(*ids.shape, *([1] * (values.dim() - 2))).expand_as(values)
    return out.scatter(1, index, values)
