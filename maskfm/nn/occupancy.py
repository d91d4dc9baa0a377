"""Occupancy decoders for R-MAE: predict which voxels of the full grid are occupied.

The objective (R-MAE / Occupancy-MAE) is the binary cross-entropy between predicted
occupancy logits and the occupancy of **every** cell of the full voxel grid (occupied = any
voxel, hidden or visible), averaged over all cells.

* :class:`DenseOccupancyDecoder` is the released decoder: three ``ConvTranspose3d`` on the
  densified stride-8 features, back to the full grid (``B x 1 x 41 x 1600 x 1408`` on KITTI,
  92 M cells per sample). Kept for reproduction.
* :class:`SparseOccupancyDecoder` reaches the same objective without the dense grid: it
  predicts logits only at the occupied voxels and at ``empty_per_occupied`` uniformly
  sampled empty cells per occupied voxel, and weights the sampled empty cells by
  ``empty cells / samples`` so the loss is an unbiased estimate of the dense mean.

Coordinates are ``[b, z, y, x]`` voxel indices; ``encoded`` features come from a sparse
backbone as ``(features (M, C), coords (M, 4), spatial_shape (z, y, x))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DenseOccupancyDecoder(nn.Module):
    """The released decoder: ``ConvTranspose3d`` x3 from ``(B, 128, 2, 200, 176)`` to the full grid."""

    def __init__(self, in_channels: int = 128) -> None:
        super().__init__()
        self.deconv1 = nn.Sequential(
            nn.ConvTranspose3d(
                in_channels, 32, 3, stride=2, padding=1, output_padding=1, bias=False
            ),
            nn.BatchNorm3d(32),
            nn.ReLU(),
        )
        self.deconv2 = nn.Sequential(
            nn.ConvTranspose3d(32, 8, 3, stride=(4, 2, 2), padding=1, output_padding=1, bias=False),
            nn.BatchNorm3d(8),
            nn.ReLU(),
        )
        self.deconv3 = nn.ConvTranspose3d(
            8, 1, 3, stride=(3, 2, 2), padding=1, output_padding=1, bias=False
        )

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        """``(B, C, 2, Y/8, X/8)`` -> ``(B, 1, 41, Y, X)`` logits (shape for the KITTI-like grids)."""
        return self.deconv3(self.deconv2(self.deconv1(dense)))

    def loss(self, features, coords, spatial_shape, target_coords, batch_size, full_shape):
        """Mean BCE over every cell of the full grid."""
        dense = densify(features, coords, spatial_shape, batch_size)
        logits = self(dense)[:, 0]
        if tuple(logits.shape[1:]) != tuple(full_shape):
            raise ValueError(
                f"dense decoder output {tuple(logits.shape[1:])} != voxel grid {tuple(full_shape)}"
            )
        target = torch.zeros_like(logits)
        b, z, y, x = target_coords.long().unbind(1)
        target[b, z, y, x] = 1.0
        return F.binary_cross_entropy_with_logits(logits, target)


def densify(
    features: torch.Tensor, coords: torch.Tensor, spatial_shape, batch_size: int
) -> torch.Tensor:
    """Sparse ``(M, C)`` at ``[b, z, y, x]`` -> dense ``(B, C, Z, Y, X)`` (zeros elsewhere)."""
    dense = features.new_zeros(batch_size, *spatial_shape, features.shape[1])
    b, z, y, x = coords.long().unbind(1)
    dense[b, z, y, x] = features
    return dense.permute(0, 4, 1, 2, 3).contiguous()


def gather_coarse(features, coords, spatial_shape, queries, full_shape, radius: int = 0):
    """Features of the coarse cells around full-resolution query cells.

    Args:
        features, coords: a sparse tensor's ``(M, C)`` features at ``[b, z, y, x]`` coarse cells.
        spatial_shape: its ``(Z, Y, X)``; full_shape: the query grid's ``(Z', Y', X')``.
        queries: ``(Q, 4)`` ``[b, z, y, x]`` in the full grid.
        radius: also gather the ``(2r+1)^3`` neighbouring coarse cells (zeros where inactive).
    Returns:
        ``(Q, C * (2r+1)^3)`` features and ``(Q, 3)`` the query's position inside its cell.
    """
    dev = queries.device
    coarse = torch.tensor(tuple(spatial_shape), device=dev)
    scaled = queries[:, 1:].float() * coarse / torch.tensor(tuple(full_shape), device=dev)
    cell = scaled.floor().long()
    batch = queries[:, 0].long()
    num_batches = (
        int(max(batch.max(), coords[:, 0].max()) + 1) if len(queries) and len(coords) else 1
    )
    lookup = torch.full((num_batches, *spatial_shape), -1, dtype=torch.long, device=dev)
    b, z, y, x = coords.long().unbind(1)
    lookup[b, z, y, x] = torch.arange(len(coords), device=dev)
    padded = torch.cat([features, features.new_zeros(1, features.shape[1])])  # row -1 -> zeros
    steps = range(-radius, radius + 1)
    gathered = []
    for dz in steps:
        for dy in steps:
            for dx in steps:
                n = cell + torch.tensor([dz, dy, dx], device=dev)
                inside = ((n >= 0) & (n < coarse)).all(dim=1)
                n = n.clamp(min=0).minimum(coarse - 1)
                row = lookup[batch, n[:, 0], n[:, 1], n[:, 2]]
                gathered.append(padded[torch.where(inside, row, torch.full_like(row, -1))])
    return torch.cat(gathered, dim=1), scaled - cell


class SparseOccupancyDecoder(nn.Module):
    """Occupancy logits at query cells from the coarse cell (3x3x3 neighbourhood) that holds them.

    The encoded features are first reduced to ``reduced`` channels (one linear layer on the
    M active coarse cells), so a query reads ``27 x reduced`` numbers: like a 3x3x3 conv
    evaluated only where it is needed.

    Args:
        in_channels: width of the encoded features (128 for VoxelBackBone8x).
        reduced: channels per coarse cell read by a query.
        hidden: MLP width.
        empty_per_occupied: sampled empty cells per occupied voxel.
    """

    def __init__(
        self,
        in_channels: int = 128,
        reduced: int = 16,
        hidden: int = 64,
        empty_per_occupied: float = 2.0,
    ) -> None:
        super().__init__()
        self.empty_per_occupied = empty_per_occupied
        self.reduce = nn.Linear(in_channels, reduced)
        self.mlp = nn.Sequential(
            nn.Linear(reduced * 27 + 6, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, features, coords, spatial_shape, queries, full_shape) -> torch.Tensor:
        """Logits ``(Q,)`` at full-resolution query cells ``queries (Q, 4)`` ``[b, z, y, x]``."""
        gathered, offset = gather_coarse(
            self.reduce(features), coords, spatial_shape, queries, full_shape, radius=1
        )
        fine = queries[:, 1:].float() / torch.tensor(full_shape, device=queries.device)
        return self.mlp(torch.cat([gathered, offset, fine], dim=1)).squeeze(1)

    def loss(
        self,
        features,
        coords,
        spatial_shape,
        target_coords,
        batch_size,
        full_shape,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Unbiased estimate of the dense mean BCE over all cells of every sample's grid."""
        dev = target_coords.device
        cells = int(torch.tensor(full_shape).prod())
        occupied = target_coords.long()
        per_sample = torch.bincount(occupied[:, 0], minlength=batch_size)
        n_empty_samples = (per_sample.double() * self.empty_per_occupied).ceil().long().clamp(min=1)
        sample_b = torch.repeat_interleave(torch.arange(batch_size, device=dev), n_empty_samples)
        full = torch.tensor(full_shape, device=dev)
        rand = torch.rand(len(sample_b), 3, generator=generator, device=dev)
        sampled = torch.cat(
            [sample_b[:, None], (rand * full).floor().long().minimum(full - 1)], dim=1
        )
        # drop sampled cells that are occupied (they are counted with the occupied ones)
        key = lambda c: ((c[:, 0] * full[0] + c[:, 1]) * full[1] + c[:, 2]) * full[2] + c[:, 3]  # noqa: E731
        empty = sampled[~torch.isin(key(sampled), key(occupied))]
        logits = self(features, coords, spatial_shape, torch.cat([occupied, empty]), full_shape)
        pos, neg = logits[: len(occupied)], logits[len(occupied) :]
        loss_pos = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="none")
        loss_neg = F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="none")
        # weight of a sampled empty cell: (empty cells of its sample) / (samples kept for it)
        kept_per_sample = torch.bincount(empty[:, 0], minlength=batch_size).clamp(min=1)
        weight = (cells - per_sample).double() / kept_per_sample.double()
        total = loss_pos.sum() + (loss_neg * weight[empty[:, 0]].to(loss_neg.dtype)).sum()
        return total / (cells * batch_size)
