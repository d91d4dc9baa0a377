"""Tests for maskfm.tokens.voxelize: hard voxelisation + MeanVFE, grids, batching, spconv parity."""

from __future__ import annotations

import pytest
import torch

from maskfm.tokens.voxelize import (
    KITTI,
    NUSCENES,
    PRESETS,
    WAYMO,
    VoxelGrid,
    batch_voxels,
    voxelize,
)

try:
    from spconv.pytorch.utils import PointToVoxel
except ImportError:  # pragma: no cover - spconv is the optional "lidar" extra
    PointToVoxel = None

# 1 m voxels on [0, 4) x [0, 3) x [0, 2): grid (x, y, z) = (4, 3, 2).
UNIT = VoxelGrid((0, 0, 0, 4, 3, 2), (1, 1, 1))


def P(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_presets_match_openpcdet_configs():
    assert KITTI.grid_size == (1408, 1600, 40) and KITTI.sparse_shape == (41, 1600, 1408)
    assert WAYMO.grid_size == (1504, 1504, 40) and WAYMO.sparse_shape == (41, 1504, 1504)
    assert NUSCENES.grid_size == (1024, 1024, 40) and NUSCENES.sparse_shape == (41, 1024, 1024)
    assert KITTI.point_cloud_range == (0.0, -40.0, -3.0, 70.4, 40.0, 1.0)
    assert KITTI.voxel_size == (0.05, 0.05, 0.1)
    assert WAYMO.point_cloud_range == (-75.2, -75.2, -2.0, 75.2, 75.2, 4.0)
    assert WAYMO.voxel_size == (0.1, 0.1, 0.15)
    assert NUSCENES.point_cloud_range == (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    assert NUSCENES.voxel_size == (0.1, 0.1, 0.2)
    assert [g.max_points_per_voxel for g in (KITTI, WAYMO, NUSCENES)] == [5, 5, 10]
    assert (KITTI.max_voxels_train, KITTI.max_voxels_test) == (16000, 40000)
    assert (WAYMO.max_voxels_train, NUSCENES.max_voxels_train) == (150000, 60000)
    assert PRESETS == {"kitti": KITTI, "waymo": WAYMO, "nuscenes": NUSCENES}
    assert UNIT.grid_size == (4, 3, 2) and UNIT.sparse_shape == (3, 3, 4)


def test_grid_validation():
    with pytest.raises(ValueError, match="max > min"):
        VoxelGrid((0, 0, 0, 0, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        VoxelGrid((0, 0, 0, 1, 1, 1), (1, 0, 1))
    with pytest.raises(ValueError, match="6 values"):
        VoxelGrid((0, 0, 0, 1, 1), (1, 1, 1))


def test_same_voxel_mean_and_coords_order_zyx():
    pts = P([0.2, 1.5, 1.1, 1.0], [0.8, 1.1, 1.9, 3.0], [3.5, 0.5, 0.5, 7.0])
    v = voxelize(pts, UNIT)
    assert v.coords.dtype == torch.int32 and v.num_points.dtype == torch.int32
    # voxel of the first point: x=0, y=1, z=1 -> (z, y, x) = (1, 1, 0); then x=3, y=0, z=0.
    assert v.coords.tolist() == [[1, 1, 0], [0, 0, 3]]
    assert v.num_points.tolist() == [2, 1]
    torch.testing.assert_close(v.features[0], torch.tensor([0.5, 1.3, 1.5, 2.0]))
    torch.testing.assert_close(v.features[1], pts[2])
    assert v.point_voxel_idx.tolist() == [0, 0, 1]


def test_boundaries_and_outside_points_dropped():
    pts = P(
        [0.0, 0.0, 0.0, 1],  # lower corner: inside, voxel (0, 0, 0)
        [4.0, 1.0, 1.0, 2],  # x == xmax: outside
        [3.999, 2.999, 1.999, 3],  # just below the upper corner: last voxel
        [-0.001, 1.0, 1.0, 4],  # below xmin: outside
        [1.0, 1.0, 1.0, 5],  # on a voxel face: belongs to the upper voxel (1, 1, 1)
        [1.0, 1.0, 2.0, 6],  # z == zmax: outside
        [float("nan"), 1.0, 1.0, 7],  # NaN: outside
    )
    v = voxelize(pts, UNIT)
    assert v.coords.tolist() == [[0, 0, 0], [1, 2, 3], [1, 1, 1]]
    assert v.point_voxel_idx.tolist() == [0, -1, 1, -1, 2, -1, -1]
    assert v.features[:, 3].tolist() == [1, 3, 5]
    assert UNIT.in_range(pts).tolist() == [True, False, True, False, True, False, False]


def test_max_points_per_voxel_keeps_the_first_points():
    # 7 points in voxel (0,0,0) interleaved with 2 in voxel (z,y,x) = (0,0,1).
    rows = [[0.1 * i, 0.5, 0.5, float(i)] for i in range(7)]
    rows.insert(3, [1.5, 0.5, 0.5, 100.0])
    rows.append([1.5, 0.2, 0.2, 200.0])
    pts = P(*rows)
    v = voxelize(pts, UNIT, max_points_per_voxel=5)
    assert v.num_points.tolist() == [5, 2]
    assert v.features[0, 3].item() == pytest.approx((0 + 1 + 2 + 3 + 4) / 5)
    assert v.features[0, 0].item() == pytest.approx(0.2)
    assert v.features[1, 3].item() == pytest.approx(150.0)
    # Points past the limit are not averaged but still point at their voxel (spconv's pc_voxel_id).
    assert v.point_voxel_idx.tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 1]
    v2 = voxelize(pts, UNIT, max_points_per_voxel=2)
    assert v2.features[0, 3].item() == pytest.approx(0.5)
    # Default: the grid's max_points_per_voxel.
    assert voxelize(pts, UNIT.with_(max_points_per_voxel=3)).num_points.tolist() == [3, 2]


def test_max_voxels_keeps_voxels_in_order_of_first_appearance():
    pts = P([3.5, 0.5, 0.5, 0], [0.5, 0.5, 0.5, 1], [3.6, 0.5, 0.5, 2], [1.5, 2.5, 1.5, 3])
    v = voxelize(pts, UNIT, max_voxels=2)
    assert v.coords.tolist() == [[0, 0, 3], [0, 0, 0]]
    assert v.num_points.tolist() == [2, 1]
    assert v.point_voxel_idx.tolist() == [0, 1, 0, -1]
    assert len(voxelize(pts, UNIT, max_voxels=0).features) == 0


def test_empty_and_bad_input():
    v = voxelize(torch.zeros(0, 4), UNIT)
    assert v.features.shape == (0, 4) and v.coords.shape == (0, 3) and len(v.point_voxel_idx) == 0
    v = voxelize(P([10.0, 10.0, 10.0, 1.0]), UNIT)
    assert len(v.features) == 0 and v.point_voxel_idx.tolist() == [-1]
    with pytest.raises(ValueError, match="shape"):
        voxelize(torch.zeros(5, 2), UNIT)
    with pytest.raises(TypeError):
        voxelize(torch.zeros(5, 4, dtype=torch.long), UNIT)


def test_deterministic_and_vectorised_on_a_large_cloud():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(50_000, 4, generator=g) * torch.tensor([70.4, 80, 4, 1]) + torch.tensor(
        [0, -40, -3, 0]
    )
    a, b = voxelize(pts, KITTI), voxelize(pts.clone(), KITTI)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert int(a.num_points.sum()) == int((a.point_voxel_idx >= 0).sum())  # all <= 5 per voxel here


def test_batch_voxels_prepends_batch_index():
    a = voxelize(P([0.5, 0.5, 0.5, 1], [1.5, 0.5, 0.5, 2]), UNIT)
    b = voxelize(P([2.5, 1.5, 0.5, 3]), UNIT)
    feats, coords, bs = batch_voxels([a, b])
    assert bs == 2 and feats.shape == (3, 4) and coords.dtype == torch.int32
    assert coords.tolist() == [[0, 0, 0, 0], [0, 0, 0, 1], [1, 0, 1, 2]]


@pytest.mark.skipif(PointToVoxel is None, reason="spconv is not installed (pip install spconv)")
@pytest.mark.parametrize(("grid", "max_voxels"), [(KITTI, None), (KITTI, 3000), (NUSCENES, None)])
def test_matches_spconv_point_to_voxel(grid, max_voxels):
    g = torch.Generator().manual_seed(1)
    lo = torch.tensor(grid.point_cloud_range[:3])
    hi = torch.tensor(grid.point_cloud_range[3:])
    span = hi - lo
    pts = torch.rand(30_000, 4, generator=g)
    pts[:, :3] = pts[:, :3] * span * 1.1 + lo - 0.05 * span  # ~25 % outside the range
    # Dense clusters so that many voxels overflow max_points_per_voxel.
    dup = pts[:1500].repeat(11, 1)
    dup[:, :3] += torch.rand(len(dup), 3, generator=g) * 0.02
    pts = torch.cat([pts, dup])[torch.randperm(len(pts) + len(dup), generator=g)]
    mine = voxelize(pts, grid, max_voxels=max_voxels)
    p2v = PointToVoxel(
        vsize_xyz=list(grid.voxel_size),
        coors_range_xyz=list(grid.point_cloud_range),
        num_point_features=4,
        max_num_voxels=max_voxels or len(pts),
        max_num_points_per_voxel=grid.max_points_per_voxel,
    )
    voxels, coords, num, pc_voxel_id = p2v.generate_voxel_with_id(pts)
    mean = voxels.sum(1) / num.clamp(min=1)[:, None].to(voxels.dtype)  # OpenPCDet MeanVFE
    assert (num == grid.max_points_per_voxel).any()
    assert torch.equal(mine.coords, coords)  # same voxels, same (first-appearance) order
    assert torch.equal(mine.num_points, num)
    torch.testing.assert_close(mine.features, mean, rtol=1e-6, atol=1e-5)
    assert torch.equal(mine.point_voxel_idx, pc_voxel_id)
