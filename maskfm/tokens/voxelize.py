"""Hard voxelisation of LiDAR points with MeanVFE features, in vectorised torch.

This reproduces what OpenPCDet's pretraining pipeline (and R-MAE on top of it) does on the CPU
data-loading side: spconv's ``Point2VoxelCPU3d`` hard voxelisation followed by ``MeanVFE``.

* A point ``p`` falls in voxel ``c = floor((p_xyz - range_min) / voxel_size)`` (computed in the
  points' dtype, float32 for real data, as spconv does); it is kept iff ``0 <= c < grid_size``
  on every axis, so points on the upper faces of the range (``p == range_max``) and NaN
  coordinates are dropped.
* ``grid_size = round((range_max - range_min) / voxel_size)`` (x, y, z) and ``sparse_shape =
  grid_size[::-1] + [1, 0, 0]`` (z, y, x), the extra z slice of OpenPCDet's backbones.
* Voxels are numbered in **order of first appearance**: voxel 0 holds the first in-range point of
  the input, voxel 1 the first in-range point that is not in voxel 0, and so on. This is the order
  in which spconv's CPU voxeliser creates voxels, so ``max_voxels`` keeps the same voxels: the
  first ``max_voxels`` voxels to appear; points that would open a later voxel are dropped.
* Each voxel keeps its first ``max_points_per_voxel`` points in input order; its feature is the
  mean of those points over all channels (MeanVFE: absolute x, y, z, intensity, ...).

Everything is a handful of tensor ops (floor, mask, ``unique``, a stable sort, ``index_add_``);
there is no Python loop over points or voxels, and the result is deterministic on the CPU (on a
GPU ``index_add_`` may sum in any order, so means may differ in the last bit).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple, cast

import numpy as np
import torch

__all__ = [
    "KITTI",
    "NUSCENES",
    "PRESETS",
    "WAYMO",
    "VoxelGrid",
    "Voxels",
    "batch_voxels",
    "voxelize",
]


def _floats(values, n: int, what: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) != n:
        raise ValueError(f"{what} must have {n} values, got {len(out)}: {out}")
    if not all(np.isfinite(out)):
        raise ValueError(f"{what} must be finite, got {out}")
    return out


@dataclass(frozen=True)
class VoxelGrid:
    """A voxel grid: ``point_cloud_range`` (xmin, ymin, zmin, xmax, ymax, zmax) in metres and
    ``voxel_size`` (x, y, z). ``max_points_per_voxel`` and ``max_voxels_train`` /
    ``max_voxels_test`` (``None`` = unlimited) are the OpenPCDet ``transform_points_to_voxels``
    settings that go with the grid (``MAX_POINTS_PER_VOXEL``, ``MAX_NUMBER_OF_VOXELS``).
    """

    point_cloud_range: tuple[float, float, float, float, float, float]
    voxel_size: tuple[float, float, float]
    max_points_per_voxel: int = 5
    max_voxels_train: int | None = None
    max_voxels_test: int | None = None
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        pcr = _floats(self.point_cloud_range, 6, "point_cloud_range")
        vs = _floats(self.voxel_size, 3, "voxel_size")
        if not all(v > 0 for v in vs):
            raise ValueError(f"voxel_size must be positive, got {vs}")
        if not all(pcr[i + 3] > pcr[i] for i in range(3)):
            raise ValueError(f"point_cloud_range must have max > min on every axis, got {pcr}")
        if self.max_points_per_voxel < 1:
            raise ValueError(f"max_points_per_voxel must be >= 1, got {self.max_points_per_voxel}")
        object.__setattr__(self, "point_cloud_range", pcr)
        object.__setattr__(self, "voxel_size", vs)
        if min(self.grid_size) < 1:
            raise ValueError(f"grid {pcr} / {vs} has an empty axis: grid_size {self.grid_size}")

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Voxels per axis (x, y, z): ``round(extent / voxel_size)`` in float32, as spconv."""
        pcr = np.asarray(self.point_cloud_range, dtype=np.float32)
        vs = np.asarray(self.voxel_size, dtype=np.float32)
        return cast(
            "tuple[int, int, int]", tuple(int(v) for v in np.round((pcr[3:] - pcr[:3]) / vs))
        )

    @property
    def sparse_shape(self) -> tuple[int, int, int]:
        """Spatial shape of the sparse tensor (z, y, x) = ``grid_size[::-1] + [1, 0, 0]``."""
        gx, gy, gz = self.grid_size
        return (gz + 1, gy, gx)

    def with_(self, **changes) -> VoxelGrid:
        """A copy with some fields replaced (e.g. ``KITTI.with_(voxel_size=(0.1, 0.1, 0.2))``)."""
        return replace(self, **changes)

    def voxel_coords(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer voxel indices (N, 3) int64 in (x, y, z) order and the in-range mask (N,)."""
        xyz = points[:, :3]
        dtype = xyz.dtype if xyz.is_floating_point() else torch.float32
        lo = torch.tensor(self.point_cloud_range[:3], dtype=dtype, device=xyz.device)
        vs = torch.tensor(self.voxel_size, dtype=dtype, device=xyz.device)
        gs = torch.tensor(self.grid_size, dtype=torch.int64, device=xyz.device)
        c = torch.floor((xyz.to(dtype) - lo) / vs)
        inside = ((c >= 0) & (c < gs)).all(dim=1)  # NaN compares False: dropped
        return torch.where(inside[:, None], c, 0).long(), inside

    def in_range(self, points: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Bool mask (N,) of the points that fall in a voxel of this grid."""
        if isinstance(points, np.ndarray):
            points = torch.from_numpy(points)
        return self.voxel_coords(points)[1]


# OpenPCDet / R-MAE dataset configs (reference lidar.md §1.3).
KITTI = VoxelGrid(
    (0.0, -40.0, -3.0, 70.4, 40.0, 1.0), (0.05, 0.05, 0.1), 5, 16000, 40000, name="kitti"
)
WAYMO = VoxelGrid(
    (-75.2, -75.2, -2.0, 75.2, 75.2, 4.0), (0.1, 0.1, 0.15), 5, 150000, 150000, name="waymo"
)
NUSCENES = VoxelGrid(
    (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.1, 0.1, 0.2), 10, 60000, 60000, name="nuscenes"
)
PRESETS: dict[str, VoxelGrid] = {"kitti": KITTI, "waymo": WAYMO, "nuscenes": NUSCENES}


class Voxels(NamedTuple):
    """One voxelised cloud.

    ``features`` (V, C) MeanVFE features, ``coords`` (V, 3) int32 (z, y, x) grid indices,
    ``num_points`` (V,) int32 points averaged per voxel (<= max_points_per_voxel), and
    ``point_voxel_idx`` (N,) int64: for every input point the index of the voxel it falls in,
    or -1 if it is outside the range or its voxel was dropped by ``max_voxels``. (As spconv's
    ``pc_voxel_id``, a point beyond the first ``max_points_per_voxel`` of a kept voxel still
    gets that voxel's index although it is not part of the mean.)
    """

    features: torch.Tensor
    coords: torch.Tensor
    num_points: torch.Tensor
    point_voxel_idx: torch.Tensor


def voxelize(
    points: torch.Tensor,
    grid: VoxelGrid,
    max_points_per_voxel: int | None = None,
    max_voxels: int | None = None,
) -> Voxels:
    """Hard-voxelise ``points`` (N, C>=3, xyz first) on ``grid`` with MeanVFE features.

    ``max_points_per_voxel`` defaults to ``grid.max_points_per_voxel`` (5 for KITTI/Waymo and
    custom grids, 10 for nuScenes). ``max_voxels=None`` keeps every voxel; otherwise only the
    first ``max_voxels`` voxels in order of first appearance (see the module docstring). Voxels
    are returned in order of first appearance.
    """
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points must have shape (N, C>=3), got {tuple(points.shape)}")
    if not points.is_floating_point():
        raise TypeError(f"points must be a floating-point tensor, got {points.dtype}")
    k = grid.max_points_per_voxel if max_points_per_voxel is None else int(max_points_per_voxel)
    if k < 1:
        raise ValueError(f"max_points_per_voxel must be >= 1, got {k}")
    if max_voxels is not None and max_voxels < 0:
        raise ValueError(f"max_voxels must be >= 0 or None, got {max_voxels}")
    device, n, ch = points.device, points.shape[0], points.shape[1]
    gx, gy, _ = grid.grid_size

    cxyz, inside = grid.voxel_coords(points)
    idx_in = inside.nonzero().squeeze(1)  # in-range points, input order
    c = cxyz[idx_in]
    m = idx_in.numel()
    key = (c[:, 2] * gy + c[:, 1]) * gx + c[:, 0]
    uniq, inv, counts = torch.unique(key, return_inverse=True, return_counts=True)
    u = uniq.numel()

    # Renumber voxels by first appearance (a permutation of the sorted unique keys).
    pos = torch.arange(m, device=device)
    first = torch.full((u,), m, dtype=torch.long, device=device)
    first.scatter_reduce_(0, inv, pos, reduce="amin")
    order = torch.argsort(first)  # first occurrences are distinct: no ties
    new_id = torch.empty_like(order)
    new_id[order] = torch.arange(u, device=device)
    vid = new_id[inv]  # (M,) voxel id of each in-range point
    num_v = u if max_voxels is None else min(u, int(max_voxels))

    # Rank of each point inside its voxel, in input order (stable sort by voxel id).
    srt = torch.argsort(vid, stable=True)
    cnt = counts[order]
    starts = torch.cumsum(cnt, 0) - cnt
    rank = torch.empty_like(vid)
    rank[srt] = pos - starts[vid[srt]]

    take = (rank < k) & (vid < num_v)
    tv = vid[take]
    feats = torch.zeros(num_v, ch, dtype=points.dtype, device=device)
    feats.index_add_(0, tv, points[idx_in[take]])
    num = torch.bincount(tv, minlength=num_v)
    feats = feats / num.clamp(min=1).to(points.dtype)[:, None]
    coords = c[first[order[:num_v]]].flip(1).to(torch.int32)  # (x,y,z) -> (z,y,x)

    point_voxel_idx = torch.full((n,), -1, dtype=torch.long, device=device)
    point_voxel_idx[idx_in] = torch.where(vid < num_v, vid, -1)
    return Voxels(feats, coords, num.to(torch.int32), point_voxel_idx)


def batch_voxels(voxels: list[Voxels]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Concatenate per-sample voxels: (features (sum V, C), coords (sum V, 4) int32
    ``[b, z, y, x]``, batch_size). The batch index is the sample's position in ``voxels``."""
    if not voxels:
        raise ValueError("batch_voxels needs at least one Voxels")
    feats = torch.cat([v.features for v in voxels])
    coords = torch.cat(
        [
            torch.cat([torch.full_like(v.coords[:, :1], b), v.coords], dim=1)
            for b, v in enumerate(voxels)
        ]
    )
    return feats, coords, len(voxels)
