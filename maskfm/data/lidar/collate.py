"""Batching voxelised LiDAR samples (:func:`collate_lidar`) and choosing the voxel grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch

from maskfm.tokens.voxelize import PRESETS, VoxelGrid, Voxels, batch_voxels


def collate_lidar(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch voxelised samples.

    Returns ``points`` (B, Nmax, 4) zero-padded with ``num_points`` (B,), ``point_labels``
    (B, Nmax) (-1 padded / unknown), ``point_voxel_idx`` (B, Nmax) int64: index of the point's
    voxel in the batch's voxel list (-1: dropped or padding), ``voxel_features`` (sum V, 4),
    ``voxel_coords`` (sum V, 4) int32 ``[b, z, y, x]``, ``voxel_num_points`` (sum V,) int32,
    ``batch_size`` (a Python int), ``skipped`` (B,) int64 and ``frame_ids`` (list of str).
    ``points`` comes first so that Lightning infers the batch size B from it.
    """
    b = len(samples)
    n = torch.tensor([len(s["points"]) for s in samples], dtype=torch.long)
    nmax = int(n.max()) if b else 0
    c = samples[0]["points"].shape[1]
    points = torch.zeros(b, nmax, c, dtype=samples[0]["points"].dtype)
    labels = torch.full((b, nmax), -1, dtype=torch.long)
    out: dict[str, Any] = {"points": points, "num_points": n, "point_labels": labels}
    has_voxels = all("voxel_features" in s for s in samples)
    if has_voxels:
        pvi = torch.full((b, nmax), -1, dtype=torch.long)
        offset = 0
    for i, s in enumerate(samples):
        k = len(s["points"])
        points[i, :k] = s["points"]
        labels[i, :k] = s["labels"]
        if has_voxels:
            idx = s["point_voxel_idx"]
            pvi[i, :k] = torch.where(idx >= 0, idx + offset, -1)
            offset += len(s["voxel_features"])
    if has_voxels:
        feats, coords, bs = batch_voxels(
            [
                Voxels(
                    s["voxel_features"],
                    s["voxel_coords"],
                    s["voxel_num_points"],
                    s["point_voxel_idx"],
                )
                for s in samples
            ]
        )
        out.update(
            point_voxel_idx=pvi,
            voxel_features=feats,
            voxel_coords=coords,
            voxel_num_points=torch.cat([s["voxel_num_points"] for s in samples]),
            batch_size=bs,
        )
    else:
        out["batch_size"] = b
    out["skipped"] = torch.tensor([int(s["skipped"]) for s in samples], dtype=torch.long)
    out["frame_ids"] = [s["frame_id"] for s in samples]
    return out


def resolve_grid(
    grid: str | VoxelGrid | None = "kitti",
    point_cloud_range: Sequence[float] | None = None,
    voxel_size: Sequence[float] | None = None,
    max_points_per_voxel: int | None = None,
) -> VoxelGrid:
    """A preset (``kitti|waymo|nuscenes``) or grid, with any explicit value overriding it.

    With ``grid=None`` both ``point_cloud_range`` and ``voxel_size`` are required. The configs
    spell the preset's range and voxel size out (so that ``${data.voxel_size}`` interpolates);
    values equal to the preset's leave it unchanged (including its max_voxels limits).
    """
    if isinstance(grid, str):
        if grid.lower() not in PRESETS:
            raise ValueError(f"grid must be one of {sorted(PRESETS)} or None, got {grid!r}")
        base = PRESETS[grid.lower()]
    elif grid is None:
        if point_cloud_range is None or voxel_size is None:
            raise ValueError("grid=None needs both point_cloud_range and voxel_size")
        base = VoxelGrid(
            cast("tuple[float, float, float, float, float, float]", tuple(point_cloud_range)),
            cast("tuple[float, float, float]", tuple(voxel_size)),
        )  # VoxelGrid checks the lengths
    else:
        base = grid
    changes: dict[str, Any] = {}
    if point_cloud_range is not None:
        changes["point_cloud_range"] = tuple(point_cloud_range)
    if voxel_size is not None:
        changes["voxel_size"] = tuple(voxel_size)
    if max_points_per_voxel is not None:
        changes["max_points_per_voxel"] = int(max_points_per_voxel)
    out = base.with_(**changes) if changes else base
    if out != base and base.name != "custom":  # explicit values that equal the preset keep its name
        out = out.with_(name=f"{base.name}+custom")
    return out
