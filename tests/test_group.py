from __future__ import annotations

import numpy as np
import pytest
import torch

from maskfm.tokens.group import (
    KNNResult,
    PointGrouper,
    PointGroups,
    farthest_point_sample,
    farthest_point_sample_naive,
    gather_points,
    group_points,
    knn,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cloud(seed: int, b: int = 4, n: int = 300, variant: str = "plain") -> torch.Tensor:
    """Random clouds; ``origin`` puts a few points at / near 0, ``dup`` adds exact duplicates."""
    g = gen(seed)
    pts = torch.randn(b, n, 3, generator=g)
    if variant in ("origin", "both"):
        pts[:, :, 0] += 3.0  # off-centre cloud: the origin points would be far, i.e. picked early
        pts[:, [3, 77, 150]] = 0.0
        pts[:, 200] = torch.tensor([0.01, -0.02, 0.0])  # |p|^2 = 5e-4: skipped too
        pts[1, 0] = 0.0  # sample 1 starts at an origin point
    if variant in ("dup", "both"):
        pts[:, 40] = pts[:, 10]
        pts[:, 41] = pts[:, 10]
        pts[2, 100:120] = pts[2, 60]
        pts[3, 250:] = pts[3, :50]  # every point of 0..49 twice
    return pts


def assert_matches_naive(pts, got, skip_origin=True):
    for b in range(pts.shape[0]):
        ref = farthest_point_sample_naive(
            pts[b].numpy(), got.shape[1], start=int(got[b, 0]), skip_origin=skip_origin
        )
        np.testing.assert_array_equal(got[b].numpy(), ref, err_msg=f"sample {b}")


# ----------------------------------------------------------------------------- FPS


@pytest.mark.parametrize("variant", ["plain", "origin", "dup", "both"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fps_matches_naive_reference(seed, variant):
    pts = cloud(seed, variant=variant)
    got = farthest_point_sample(pts, 32)
    assert got.shape == (4, 32) and got.dtype == torch.long
    assert (got[:, 0] == 0).all()
    assert_matches_naive(pts, got)
    if variant in ("origin", "both"):
        skipped = {3, 77, 150, 200}
        for b in range(4):
            assert not skipped & set(got[b, 1:].tolist())
        assert 0 not in got[1, 1:].tolist()  # sample 1's point 0 is at the origin


def test_fps_without_duplicates_gives_distinct_indices():
    got = farthest_point_sample(cloud(5, n=300), 300)
    for row in got:
        assert len(set(row.tolist())) == 300


def test_fps_hand_computed_ties_and_exhaustion():
    # 0 and 4 are at the origin; 1 and 2 coincide
    pts = torch.tensor(
        [[[0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 0]]], dtype=torch.float32
    )
    # start 0; farthest valid is 3 (d=4); then 1 and 2 tie at d=1 -> lowest (1); then all
    # remaining candidates have temp 0 -> the lowest candidate index, 1, again
    assert farthest_point_sample(pts, 5).tolist() == [[0, 3, 1, 1, 1]]
    assert farthest_point_sample_naive(pts[0].numpy(), 5).tolist() == [0, 3, 1, 1, 1]
    # skip_origin=False: the origin point 4 is a candidate (temp 0 after step 0, like 0)
    assert farthest_point_sample(pts, 5, skip_origin=False).tolist() == [[0, 3, 1, 0, 0]]


def test_fps_all_points_skipped_returns_zero():
    pts = torch.zeros(2, 6, 3)
    pts[1, :, 0] = 0.01  # |p|^2 = 1e-4 <= 1e-3
    assert farthest_point_sample(pts, 4).tolist() == [[0] * 4] * 2
    assert farthest_point_sample_naive(pts[1].numpy(), 4).tolist() == [0] * 4


def test_fps_origin_threshold():
    # |p1|^2 = 9e-4 (skipped) although it is the farthest from p0; |p2|^2 = 1.1e-3 is kept
    pts = torch.tensor([[[1, 0, 0], [0.03, 0, 0], [0.0332, 0, 0]]], dtype=torch.float32)
    assert farthest_point_sample(pts, 2).tolist() == [[0, 2]]
    assert farthest_point_sample(pts, 2, skip_origin=False).tolist() == [[0, 1]]


@pytest.mark.parametrize("seed", [0, 3])
def test_fps_skip_origin_false_matches_naive(seed):
    pts = cloud(seed, variant="both")
    got = farthest_point_sample(pts, 32, skip_origin=False)
    assert_matches_naive(pts, got, skip_origin=False)


def test_fps_random_start_reproducible_and_per_sample():
    pts = cloud(0, b=8, variant="both")
    a = farthest_point_sample(pts, 16, random_start=True, generator=gen(7))
    b = farthest_point_sample(pts, 16, random_start=True, generator=gen(7))
    c = farthest_point_sample(pts, 16, random_start=True, generator=gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len(set(a[:, 0].tolist())) > 1  # one draw per sample
    assert_matches_naive(pts, a)


def test_fps_float64_and_noncontiguous_input():
    pts = cloud(4)
    ref = farthest_point_sample(pts, 20)
    assert torch.equal(farthest_point_sample(pts.double(), 20), ref)
    wide = torch.cat([pts, torch.randn(4, 300, 2)], dim=-1)[..., :3]
    assert torch.equal(farthest_point_sample(wide, 20), ref)


@pytest.mark.parametrize(
    "shape,num,match",
    [
        ((4, 300), 8, r"points must have shape \(B, N, 3\), got \(4, 300\)"),
        ((4, 300, 2), 8, r"points must have shape \(B, N, 3\), got \(4, 300, 2\)"),
        ((2, 10, 3), 11, r"num_samples=11 must be in \[1, 10\] \(number of points N=10\)"),
        ((2, 10, 3), 0, r"num_samples=0 must be in \[1, 10\]"),
    ],
)
def test_fps_errors(shape, num, match):
    with pytest.raises(ValueError, match=match):
        farthest_point_sample(torch.randn(shape), num)


def test_fps_rejects_integer_points():
    with pytest.raises(ValueError, match="floating-point"):
        farthest_point_sample(torch.ones(1, 4, 3, dtype=torch.long), 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fps_and_group_cuda_match_cpu():
    pts = cloud(1, variant="both")
    ref = farthest_point_sample(pts, 32)
    assert torch.equal(farthest_point_sample(pts.cuda(), 32).cpu(), ref)
    g_cpu = group_points(pts, 32, 16)
    g_gpu = group_points(pts.cuda(), 32, 16)
    assert torch.equal(g_gpu.center_idx.cpu(), g_cpu.center_idx)
    torch.testing.assert_close(g_gpu.neighborhood.cpu(), g_cpu.neighborhood)
    r = farthest_point_sample(pts.cuda(), 8, random_start=True, generator=gen(0))
    assert r.device.type == "cuda"


# ----------------------------------------------------------------------------- kNN


def brute_knn(q: np.ndarray, p: np.ndarray, k: int):
    d = ((q[:, :, None, :].astype(np.float64) - p[:, None, :, :].astype(np.float64)) ** 2).sum(-1)
    idx = np.argsort(d, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(d, idx, axis=-1), idx


@pytest.mark.parametrize("chunk", [None, 7 * 200])
def test_knn_matches_brute_force(chunk):
    g = gen(3)
    q = torch.randn(3, 20, 3, generator=g)
    p = torch.randn(3, 200, 3, generator=g)
    kwargs = {} if chunk is None else {"max_chunk_elements": chunk}  # chunk: 2 queries at a time
    res = knn(q, p, 8, **kwargs)
    assert isinstance(res, KNNResult)
    assert res.dists.shape == res.idx.shape == (3, 20, 8) and res.idx.dtype == torch.long
    ref_d, ref_i = brute_knn(q.numpy(), p.numpy(), 8)
    np.testing.assert_allclose(res.dists.numpy(), ref_d, rtol=1e-5, atol=1e-6)
    assert (res.dists[..., 1:] >= res.dists[..., :-1]).all()  # sorted ascending
    assert (np.sort(res.idx.numpy(), -1) == np.sort(ref_i, -1)).all()


def test_knn_query_on_points_has_zero_distance_first():
    p = torch.randn(2, 50, 3, generator=gen(1)) * 10 + 100  # far from the origin
    res = knn(p[:, :5], p, 4)
    assert torch.equal(res.idx[..., 0], torch.arange(5).expand(2, 5))
    assert (res.dists[..., 0] == 0).all() and (res.dists >= 0).all()


def test_knn_distances_are_differentiable():
    q = torch.randn(1, 4, 3, dtype=torch.float64, requires_grad=True)
    p = torch.randn(1, 30, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: knn(a, b, 3).dists, (q, p))


@pytest.mark.parametrize(
    "qs,ps,k,match",
    [
        ((2, 5, 3), (3, 10, 3), 2, r"must agree in B and C, got \(2, 5, 3\) and \(3, 10, 3\)"),
        ((2, 5, 3), (2, 10, 2), 2, r"must agree in B and C"),
        ((2, 5, 3), (2, 10, 3), 11, r"k=11 must be in \[1, 10\]"),
        ((5, 3), (2, 10, 3), 1, r"query must have shape \(B, N, C\), got \(5, 3\)"),
    ],
)
def test_knn_errors(qs, ps, k, match):
    with pytest.raises(ValueError, match=match):
        knn(torch.randn(qs), torch.randn(ps), k)


def test_gather_points():
    p = torch.randn(2, 10, 4)
    idx = torch.randint(10, (2, 3, 5), generator=gen(0))
    out = gather_points(p, idx)
    assert out.shape == (2, 3, 5, 4)
    assert torch.equal(out[1, 2, 3], p[1, idx[1, 2, 3]])
    assert gather_points(p, idx[:, 0, 0]).shape == (2, 4)
    with pytest.raises(ValueError, match=r"idx has batch size 3 .* expected 2"):
        gather_points(p, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        gather_points(p, torch.zeros(2, 4))


# ----------------------------------------------------------------------------- grouping


def test_group_points_shapes_and_centring():
    pts = cloud(2, b=3, n=300)
    out = group_points(pts, 32, 16)
    assert isinstance(out, PointGroups)
    assert out.neighborhood.shape == (3, 32, 16, 3)
    assert out.centers.shape == (3, 32, 3)
    assert out.center_idx.shape == (3, 32) and out.idx.shape == (3, 32, 16)
    assert torch.equal(out.center_idx, farthest_point_sample(pts, 32))
    assert torch.equal(out.centers, gather_points(pts, out.center_idx))
    torch.testing.assert_close(
        out.neighborhood + out.centers.unsqueeze(2), gather_points(pts, out.idx), rtol=0, atol=1e-6
    )
    # each centre is its own nearest neighbour: first neighbour index = centre, offset exactly 0
    assert torch.equal(out.idx[:, :, 0], out.center_idx)
    assert (out.neighborhood[:, :, 0] == 0).all()
    # neighbourhoods are the kNN sets
    ref_d, ref_i = brute_knn(out.centers.numpy(), pts.numpy(), 16)
    assert (np.sort(out.idx.numpy(), -1) == np.sort(ref_i, -1)).all()
    dists = out.neighborhood.square().sum(-1)
    assert (dists[..., 1:] >= dists[..., :-1]).all()


def test_group_points_gradients():
    pts = torch.randn(2, 40, 3, dtype=torch.float64, generator=gen(6), requires_grad=True)
    w = torch.randn(2, 8, 5, 3, dtype=torch.float64, generator=gen(7))
    out = group_points(pts, 8, 5)
    (out.neighborhood * w).sum().backward()
    # d/dp of sum w * (p[idx] - p[center]) = scatter(+w at idx) - scatter(sum_M w at centre)
    expected = torch.zeros(2, 40, 3, dtype=torch.float64)
    expected.scatter_add_(1, out.idx.reshape(2, -1, 1).expand(-1, -1, 3), w.reshape(2, -1, 3))
    expected.scatter_add_(1, out.center_idx.unsqueeze(-1).expand(-1, -1, 3), -w.sum(2))
    torch.testing.assert_close(pts.grad, expected)
    small = pts.detach()[:1, :20].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: group_points(p, 4, 3).neighborhood, (small,))


def test_group_points_errors():
    pts = torch.randn(2, 20, 3)
    with pytest.raises(ValueError, match=r"group_size=21 must be in \[1, 20\]"):
        group_points(pts, 4, 21)
    with pytest.raises(ValueError, match=r"num_groups=30 must be in \[1, 20\]"):
        group_points(pts, 30, 4)
    with pytest.raises(ValueError, match=r"points must have shape \(B, N, 3\), got \(2, 20, 6\)"):
        group_points(torch.randn(2, 20, 6), 4, 4)


def test_point_grouper_module():
    grouper = PointGrouper(num_groups=16, group_size=8)
    assert list(grouper.parameters()) == [] and list(grouper.buffers()) == []
    assert "num_groups=16, group_size=8" in repr(grouper)
    pts = cloud(1, n=128)
    out = grouper(pts)
    ref = group_points(pts, 16, 8)
    assert torch.equal(out.idx, ref.idx) and torch.equal(out.neighborhood, ref.neighborhood)
    rnd = PointGrouper(16, 8, random_start=True)
    assert torch.equal(rnd(pts, gen(1)).center_idx, rnd(pts, gen(1)).center_idx)
    assert not torch.equal(rnd(pts, gen(1)).center_idx, rnd(pts, gen(2)).center_idx)
    with pytest.raises(ValueError, match="num_groups=0"):
        PointGrouper(num_groups=0)
