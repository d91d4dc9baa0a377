from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maskfm.nn.chamfer import (
    ChamferDistanceL1,
    ChamferDistanceL2,
    chamfer_l1,
    chamfer_l2,
    nearest_sq_dists,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_nn(x: np.ndarray, y: np.ndarray):
    """Double loops in float64: squared NN distances x -> y and y -> x."""
    b, n, _ = x.shape
    m = y.shape[1]
    d1 = np.full((b, n), np.inf)
    d2 = np.full((b, m), np.inf)
    for k in range(b):
        for i in range(n):
            for j in range(m):
                d = float(((x[k, i].astype(np.float64) - y[k, j].astype(np.float64)) ** 2).sum())
                d1[k, i] = min(d1[k, i], d)
                d2[k, j] = min(d2[k, j], d)
    return d1, d2


def brute_l2(x, y):
    d1, d2 = brute_nn(x, y)
    return d1.mean() + d2.mean()


def brute_l1(x, y):
    d1, d2 = brute_nn(x, y)
    return (np.sqrt(d1).mean() + np.sqrt(d2).mean()) / 2


SIZES = [(3, 17, 23), (2, 32, 32), (4, 5, 1)]


@pytest.mark.parametrize("b,n,m", SIZES)
def test_nearest_sq_dists_match_brute_force(b, n, m):
    g = gen(n + m)
    x = torch.randn(b, n, 3, generator=g)
    y = torch.randn(b, m, 3, generator=g)
    d1, d2 = nearest_sq_dists(x, y)
    assert d1.shape == (b, n) and d2.shape == (b, m) and d1.dtype == torch.float32
    r1, r2 = brute_nn(x.numpy(), y.numpy())
    np.testing.assert_allclose(d1.numpy(), r1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d2.numpy(), r2, rtol=1e-5, atol=1e-6)
    # chunked path (one row of x per chunk) gives the same result
    c1, c2 = nearest_sq_dists(x, y, max_chunk_elements=1)
    assert torch.equal(c1, d1) and torch.equal(c2, d2)


@pytest.mark.parametrize("b,n,m", SIZES)
def test_chamfer_values_match_brute_force(b, n, m):
    g = gen(100 + n)
    x = torch.randn(b, n, 3, generator=g)
    y = torch.randn(b, m, 3, generator=g) * 0.5 + 0.1
    assert math.isclose(chamfer_l2(x, y).item(), brute_l2(x.numpy(), y.numpy()), rel_tol=1e-5)
    assert math.isclose(chamfer_l1(x, y).item(), brute_l1(x.numpy(), y.numpy()), rel_tol=1e-5)
    assert chamfer_l2(x, y).dim() == 0
    # modules are thin wrappers
    assert torch.equal(ChamferDistanceL2()(x, y), chamfer_l2(x, y))
    assert torch.equal(ChamferDistanceL1()(x, y), chamfer_l1(x, y))


def test_definitions_sum_vs_average_of_directions():
    # x = {0}, y = {(3,0,0), (4,0,0)}: dist1 = [9], dist2 = [9, 16]
    x = torch.zeros(1, 1, 3)
    y = torch.tensor([[[3.0, 0, 0], [4.0, 0, 0]]])
    assert chamfer_l2(x, y).item() == pytest.approx(9 + 12.5)
    assert chamfer_l1(x, y).item() == pytest.approx((3 + 3.5) / 2)


def test_mean_is_over_batch_and_points_jointly():
    g = gen(1)
    x = torch.randn(3, 8, 3, generator=g)
    y = torch.randn(3, 11, 3, generator=g)
    d1, d2 = nearest_sq_dists(x, y)
    torch.testing.assert_close(chamfer_l2(x, y), d1.mean() + d2.mean())
    torch.testing.assert_close(chamfer_l1(x, y), (d1.sqrt().mean() + d2.sqrt().mean()) / 2)


def test_zero_for_identical_sets_and_permutations():
    x = torch.randn(2, 20, 3, generator=gen(2)) * 10
    perm = x[:, torch.randperm(20, generator=gen(3))]
    for y in (x, perm):
        assert chamfer_l2(x, y).item() == 0.0
        assert chamfer_l1(x, y).item() == 0.0


def test_l1_gradient_finite_at_identical_sets():
    x = torch.randn(2, 16, 3, generator=gen(4), requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    chamfer_l1(x, y).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    x.grad = None
    chamfer_l2(x, y.detach()).backward()
    assert torch.isfinite(x.grad).all() and (x.grad == 0).all()


def test_gradients_match_finite_differences():
    g = gen(5)
    x = torch.randn(2, 6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(2, 9, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(chamfer_l2, (x, y))
    assert torch.autograd.gradcheck(chamfer_l1, (x, y))


def test_symmetric():
    g = gen(6)
    x = torch.randn(3, 12, 3, generator=g)
    y = torch.randn(3, 7, 3, generator=g)
    torch.testing.assert_close(chamfer_l2(x, y), chamfer_l2(y, x))
    torch.testing.assert_close(chamfer_l1(x, y), chamfer_l1(y, x))


def test_autocast_does_not_lower_precision():
    g = gen(7)
    x = torch.randn(2, 32, 3, generator=g)
    y = torch.randn(2, 32, 3, generator=g)
    ref = chamfer_l2(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = chamfer_l2(x, y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    half = chamfer_l2(x.bfloat16(), y.bfloat16())
    assert half.dtype == torch.float32


@pytest.mark.parametrize(
    "xs,ys,match",
    [
        ((4, 3), (4, 3), r"x must have shape \(B, N, 3\), got \(4, 3\)"),
        ((2, 5, 3), (2, 5, 2), r"y must have shape \(B, N, 3\), got \(2, 5, 2\)"),
        ((2, 5, 3), (3, 5, 3), r"same batch size, got x \(2, 5, 3\) and y \(3, 5, 3\)"),
        ((2, 0, 3), (2, 5, 3), r"at least one point per set, got shape \(2, 0, 3\)"),
    ],
)
def test_errors(xs, ys, match):
    with pytest.raises(ValueError, match=match):
        chamfer_l2(torch.randn(xs), torch.randn(ys))
