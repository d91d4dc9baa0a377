"""Point-cloud tokenisation: farthest point sampling, kNN and patch grouping.

Pure-torch (CPU and CUDA, no compiled extension) replacements for the ops that Point-BERT /
Point-MAE take from ``pointnet2_ops`` and ``KNN_CUDA``:

* :func:`farthest_point_sample` follows the rules of ``pointnet2_ops.furthest_point_sample``
  (start at index 0, running min squared distance initialised to 1e10, never pick points with
  ``|p|^2 <= 1e-3``), see its docstring for the details and the one known difference.
* :func:`knn` returns the ``k`` nearest points of every query, sorted by squared distance.
* :func:`group_points` / :class:`PointGrouper` build the ``(B, G, M, 3)`` patches of the
  originals' ``Group`` module: FPS centres, kNN neighbourhoods translated to their centre (no
  scaling).

Shapes follow pytorch3d's conventions: ``points: (B, N, 3)``, ``B`` clouds of ``N`` points.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

__all__ = [
    "KNNResult",
    "PointGroups",
    "PointGrouper",
    "farthest_point_sample",
    "farthest_point_sample_naive",
    "gather_points",
    "group_points",
    "knn",
]

# Constants of the pointnet2_ops kernel (``sampling_gpu.cu``).
_FPS_INIT_DIST = 1e10  # initial value of the running min squared distance ``temp``
_FPS_ORIGIN_EPS = 1e-3  # points with ``|p|^2 <= 1e-3`` are never selected

# knn() splits the queries so that one chunk of the (B, S_chunk, N) distance matrix holds at most
# this many elements (2**22 float32 = 16 MiB; on a 2-core CPU smaller chunks were also faster
# than one big matrix, as they stay closer to cache).
KNN_CHUNK_ELEMENTS = 2**22


class KNNResult(NamedTuple):
    """Output of :func:`knn`.

    Attributes:
        dists: ``(B, S, k)`` squared Euclidean distances, ascending along the last dimension.
        idx: ``(B, S, k)`` int64 indices into the ``N`` points.
    """

    dists: torch.Tensor
    idx: torch.Tensor


class PointGroups(NamedTuple):
    """Output of :func:`group_points`.

    Attributes:
        neighborhood: ``(B, G, M, 3)`` the ``M`` nearest points of each centre, minus the centre.
        centers: ``(B, G, 3)`` the group centres (points selected by FPS).
        center_idx: ``(B, G)`` int64 indices of the centres among the ``N`` points.
        idx: ``(B, G, M)`` int64 indices of the neighbourhood points, nearest first
            (``idx[..., 0]`` is the centre itself unless it has an exact duplicate).
    """

    neighborhood: torch.Tensor
    centers: torch.Tensor
    center_idx: torch.Tensor
    idx: torch.Tensor


# --------------------------------------------------------------------------------------------
# input checks


def _check_cloud(x: torch.Tensor, name: str, dim: int | None = 3) -> None:
    """Raise ValueError unless ``x`` is a floating tensor of shape ``(B, N, dim)``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    want = f"(B, N, {dim})" if dim is not None else "(B, N, C)"
    if x.dim() != 3 or (dim is not None and x.shape[-1] != dim):
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _check_count(value: int, name: str, low: int, high: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value} must be in [{low}, {high}] ({what})")


# --------------------------------------------------------------------------------------------
# farthest point sampling


def farthest_point_sample(
    points: torch.Tensor,
    num_samples: int,
    *,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    skip_origin: bool = True,
) -> torch.Tensor:
    """Batched farthest point sampling with the rules of ``pointnet2_ops.furthest_point_sample``.

    For each cloud: the first index is 0 (or uniform in ``[0, N)`` with ``random_start``); a
    running minimum squared distance ``temp`` starts at 1e10; at each of the ``S - 1`` following
    steps ``temp`` is lowered with the squared distance to the last selected point and the next
    index is the argmax of ``temp`` (ties go to the lowest index). With ``skip_origin`` points with
    ``|p|^2 <= 1e-3`` are never selected (except as the first index); if no other candidate is
    left the step returns index 0, as the kernel does. Once every candidate is selected ``temp``
    is 0 everywhere and the lowest candidate index is repeated (also as the kernel does).

    All arithmetic is float32 with the kernel's operation order, so results are exactly those of
    :func:`farthest_point_sample_naive`. The CUDA kernel itself may break exact ties
    differently when ``N`` exceeds its thread count (the largest power of two <= N, capped at
    512): each thread scans a strided subset, so the lowest index does not always win; nvcc may
    also fuse multiply-adds, changing the last bit of some distances.

    The loop runs over the ``S`` sequential steps only; batch and points are tensor ops, on the
    device of ``points``. No gradient flows through the indices.

    Args:
        points: ``(B, N, 3)`` floating-point coordinates.
        num_samples: ``S``, number of indices to draw per cloud, ``1 <= S <= N``.
        random_start: draw the first index uniformly per cloud from ``generator`` instead of 0.
        generator: random generator for ``random_start`` (any device; the draw is moved to
            ``points.device``).
        skip_origin: apply the kernel's ``|p|^2 <= 1e-3`` rule; False treats all points alike.

    Returns:
        ``(B, S)`` int64 indices into the ``N`` points.
    """
    _check_cloud(points, "points")
    b, n, _ = points.shape
    _check_count(num_samples, "num_samples", 1, n, f"number of points N={n}")
    device = points.device
    with torch.no_grad():
        # planar float32 layout (3, B, N): each coordinate is a contiguous (B, N) slab
        xyz = points.detach().to(torch.float32).permute(2, 0, 1).contiguous()
        if random_start:
            gen_device = generator.device if generator is not None else device
            cur = torch.randint(n, (b,), generator=generator, device=gen_device).to(device)
        else:
            cur = torch.zeros(b, dtype=torch.long, device=device)
        # temp: skipped points are pinned to -1 (the kernel's initial ``best``), below every
        # real distance, so argmax ignores them and returns 0 when nothing else is left.
        temp = torch.full((b, n), _FPS_INIT_DIST, dtype=torch.float32, device=device)
        if skip_origin:
            sq_norm = xyz[0] * xyz[0] + xyz[1] * xyz[1] + xyz[2] * xyz[2]
            # compare in float64: the kernel tests ``float <= 1e-3`` with a double literal
            temp.masked_fill_(sq_norm.double() <= _FPS_ORIGIN_EPS, -1.0)
        out = torch.empty(b, num_samples, dtype=torch.long, device=device)
        out[:, 0] = cur
        diff = torch.empty_like(xyz)
        dist = torch.empty_like(temp)
        for j in range(1, num_samples):
            last = xyz.gather(2, cur.view(1, b, 1).expand(3, b, 1))  # (3, B, 1)
            torch.sub(xyz, last, out=diff)
            diff.mul_(diff)
            torch.add(diff[0], diff[1], out=dist)  # (dx^2 + dy^2) + dz^2, as the kernel
            dist.add_(diff[2])
            torch.minimum(temp, dist, out=temp)
            cur = temp.max(dim=1).indices  # first max on ties (documented); beats argmax
            out[:, j] = cur
    return out


def farthest_point_sample_naive(
    points: np.ndarray, num_samples: int, start: int = 0, skip_origin: bool = True
) -> np.ndarray:
    """Per-point reference of :func:`farthest_point_sample` for one cloud (slow, for tests).

    A literal transcription of the ``pointnet2_ops`` kernel loop with a single thread, in
    float32 scalar arithmetic.

    Args:
        points: ``(N, 3)`` array.
        num_samples: ``S``, ``1 <= S <= N``.
        start: the first index.
        skip_origin: never select points with ``|p|^2 <= 1e-3`` (except ``start``).

    Returns:
        ``(S,)`` int64 array of indices.
    """
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    n = pts.shape[0]
    _check_count(num_samples, "num_samples", 1, n, f"number of points N={n}")
    _check_count(start, "start", 0, n - 1, f"an index into N={n} points")
    temp = [np.float32(_FPS_INIT_DIST)] * n
    coords = [tuple(p) for p in pts]  # np.float32 scalars
    old = start
    selected = [old]
    for _ in range(1, num_samples):
        best, besti = -1.0, 0
        x1, y1, z1 = coords[old]
        for k in range(n):
            x2, y2, z2 = coords[k]
            mag = x2 * x2 + y2 * y2 + z2 * z2
            if skip_origin and float(mag) <= _FPS_ORIGIN_EPS:
                continue
            d = (x2 - x1) * (x2 - x1) + (y2 - y1) * (y2 - y1) + (z2 - z1) * (z2 - z1)
            d2 = min(d, temp[k])
            temp[k] = d2
            if d2 > best:
                best, besti = d2, k
        old = besti
        selected.append(old)
    return np.asarray(selected, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# gather / kNN


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Batched indexing ``out[b, ...] = points[b, idx[b, ...]]`` (differentiable in ``points``).

    Args:
        points: ``(B, N, C)``.
        idx: ``(B, ...)`` integer indices in ``[0, N)`` (not range-checked here; out-of-range
            indices make ``torch.gather`` fail).

    Returns:
        ``(B, ..., C)``.
    """
    _check_cloud(points, "points", dim=None)
    if not isinstance(idx, torch.Tensor) or idx.dim() < 1:
        raise ValueError(f"idx must be a tensor of shape (B, ...), got {idx!r}")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise ValueError(f"idx must be an integer tensor, got dtype {idx.dtype}")
    b, _, c = points.shape
    if idx.shape[0] != b:
        raise ValueError(
            f"idx has batch size {idx.shape[0]} (shape {tuple(idx.shape)}), expected {b} "
            f"as points {tuple(points.shape)}"
        )
    flat = idx.reshape(b, -1, 1).long().expand(-1, -1, c)
    return points.gather(1, flat).reshape(*idx.shape, c)


def _knn_select(
    query: torch.Tensor, points: torch.Tensor, k: int, max_elements: int
) -> torch.Tensor:
    """``(B, S, k)`` indices of the k smallest ``|p|^2 - 2 q.p`` (= |q - p|^2 - |q|^2), no grad."""
    b, s, _ = query.shape
    n = points.shape[1]
    dtype = torch.promote_types(torch.promote_types(query.dtype, points.dtype), torch.float32)
    chunk = max(1, min(s, max_elements // max(1, b * n)))
    with torch.no_grad(), torch.autocast(query.device.type, enabled=False):
        q = query.detach().to(dtype)
        p = points.detach().to(dtype)
        p_t = p.transpose(1, 2)  # (B, C, N)
        p_sq = (p * p).sum(dim=-1).unsqueeze(1)  # (B, 1, N)
        parts = []
        for s0 in range(0, s, chunk):
            # |q|^2 is constant along N and does not change the ranking: leave it out
            score = torch.baddbmm(p_sq, q[:, s0 : s0 + chunk], p_t, alpha=-2.0)
            parts.append(score.topk(k, dim=-1, largest=False, sorted=True).indices)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _knn_refine(
    query: torch.Tensor, points: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact squared distances of the selected pairs, re-sorted: (dists, idx, neighbours)."""
    nb = gather_points(points, idx)  # (B, S, k, C)
    dists = (nb - query.unsqueeze(2)).square().sum(dim=-1)
    dists, order = dists.sort(dim=-1, stable=True)
    idx = idx.gather(-1, order)
    nb = nb.gather(2, order.unsqueeze(-1).expand_as(nb))
    return dists, idx, nb


def _check_knn_inputs(query: torch.Tensor, points: torch.Tensor, k: int) -> None:
    _check_cloud(query, "query", dim=None)
    _check_cloud(points, "points", dim=None)
    if query.shape[0] != points.shape[0] or query.shape[2] != points.shape[2]:
        raise ValueError(
            f"query (B, S, C) and points (B, N, C) must agree in B and C, got "
            f"{tuple(query.shape)} and {tuple(points.shape)}"
        )
    n = points.shape[1]
    _check_count(k, "k", 1, n, f"number of points N={n}")


def knn(
    query: torch.Tensor,
    points: torch.Tensor,
    k: int,
    *,
    max_chunk_elements: int = KNN_CHUNK_ELEMENTS,
) -> KNNResult:
    """The ``k`` nearest ``points`` of every query point, nearest first.

    Selection ranks ``|p|^2 - 2 q.p`` (the expanded squared distance minus the per-query constant
    ``|q|^2``, one ``baddbmm``) with ``topk(largest=False, sorted=True)``, in float32 or wider
    and with autocast disabled. The returned distances are then recomputed exactly as
    ``|q - p|^2`` for the selected pairs (so they are >= 0 and a query that is one of the points
    gets distance exactly 0) and the ``k`` entries are re-sorted by them (stable). Pairs whose
    distances differ by less than float32 rounding of the expansion may be ranked either way.

    Queries are processed in chunks so that one chunk's ``(B, S_chunk, N)`` score matrix has at
    most ``max_chunk_elements`` entries (default 2**22, 16 MiB in float32).

    Args:
        query: ``(B, S, C)`` query coordinates (C = 3 for point clouds).
        points: ``(B, N, C)``.
        k: number of neighbours, ``1 <= k <= N``.
        max_chunk_elements: memory bound of one distance chunk (elements).

    Returns:
        :class:`KNNResult` ``(dists (B, S, k) squared, idx (B, S, k) int64)``; ``dists`` is
        differentiable w.r.t. ``query`` and ``points``.
    """
    _check_knn_inputs(query, points, k)
    _check_count(max_chunk_elements, "max_chunk_elements", 1, 2**62, "a positive element count")
    idx = _knn_select(query, points, k, max_chunk_elements)
    dists, idx, _ = _knn_refine(query, points, idx)
    return KNNResult(dists, idx)


# --------------------------------------------------------------------------------------------
# grouping


def group_points(
    points: torch.Tensor,
    num_groups: int,
    group_size: int,
    *,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> PointGroups:
    """Split clouds into overlapping local patches, as the ``Group`` module of Point-BERT/MAE.

    ``G`` centres are chosen by :func:`farthest_point_sample`; each patch is the ``M`` nearest
    points of its centre among all ``N`` points (:func:`knn`), translated so that the centre is at
    the origin (no scaling). Indices are computed without gradient; ``neighborhood`` and
    ``centers`` are gathered from ``points`` and carry its gradient.

    Args:
        points: ``(B, N, 3)``.
        num_groups: ``G``, ``1 <= G <= N``.
        group_size: ``M``, ``1 <= M <= N``.
        random_start: random first FPS index per cloud (default: index 0, as the originals).
        generator: random generator for ``random_start``.

    Returns:
        :class:`PointGroups` ``(neighborhood (B, G, M, 3), centers (B, G, 3),
        center_idx (B, G), idx (B, G, M))``.
    """
    _check_cloud(points, "points")
    n = points.shape[1]
    _check_count(num_groups, "num_groups", 1, n, f"number of points N={n}")
    _check_count(group_size, "group_size", 1, n, f"number of points N={n}")
    center_idx = farthest_point_sample(
        points, num_groups, random_start=random_start, generator=generator
    )
    centers = gather_points(points, center_idx)  # (B, G, 3)
    idx = _knn_select(centers, points, group_size, KNN_CHUNK_ELEMENTS)
    _, idx, nb = _knn_refine(centers, points, idx)
    neighborhood = nb - centers.unsqueeze(2)
    return PointGroups(neighborhood, centers, center_idx, idx)


class PointGrouper(nn.Module):
    """Module wrapper of :func:`group_points` (no parameters).

    Args:
        num_groups: ``G`` centres per cloud (64 for 1024 points in Point-BERT/MAE).
        group_size: ``M`` points per patch (32).
        random_start: random first FPS index per cloud instead of index 0.
    """

    def __init__(self, num_groups: int = 64, group_size: int = 32, random_start: bool = False):
        super().__init__()
        _check_count(num_groups, "num_groups", 1, 2**62, "a positive number of groups")
        _check_count(group_size, "group_size", 1, 2**62, "a positive group size")
        self.num_groups = int(num_groups)
        self.group_size = int(group_size)
        self.random_start = bool(random_start)

    def forward(
        self, points: torch.Tensor, generator: torch.Generator | None = None
    ) -> PointGroups:
        """``points: (B, N, 3)`` -> :class:`PointGroups` (see :func:`group_points`)."""
        return group_points(
            points,
            self.num_groups,
            self.group_size,
            random_start=self.random_start,
            generator=generator,
        )

    def extra_repr(self) -> str:
        return (
            f"num_groups={self.num_groups}, group_size={self.group_size}, "
            f"random_start={self.random_start}"
        )
