"""Procedural 3-D shapes as point clouds: a download-free stand-in for ShapeNet / ModelNet.

Each sample is a surface point cloud of one of ``len(CLASSES)`` primitive shapes. Points are
drawn uniformly *on the surface* (area-weighted across the parts of a shape), then the
shape is stretched per axis, gently deformed, rotated, jittered and finally centred and
scaled into the unit sphere (like ShapeNet-55's ``pc_norm``). Everything is vectorised
numpy; one 1024-point sample takes well under a millisecond or two on one CPU core.

Uniformity under the per-axis stretch ``diag(s)`` is kept exact by rejection: a point with
unit normal ``n`` on the canonical surface is kept with probability proportional to the local
area scale ``|diag(s)^-1 n|`` (the area element of a surface mapped by a linear map ``M``
scales with ``|det M| * |M^-T n|``). Parts whose parametrisation is not area-uniform
(the torus tube angle) contribute an extra density weight to the same rejection step. The
final smooth deformation is small and is not corrected for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from maskfm.data.base import SeededSamples

CLASSES = (
    "sphere",
    "ellipsoid",
    "box",
    "cylinder",
    "cone",
    "torus",
    "capsule",
    "pyramid",
    "tetrahedron",
    "prism",
    "bowl",
    "annulus",
    "dumbbell",
    "l_shape",
)

_SPLIT_IDS = {"train": 0, "test": 1}

# Per-axis stretch applied to every class (a sphere gets a much narrower one so that it
# stays distinguishable from the ellipsoid class).
ASPECT_RANGE = (0.7, 1.4)
_SPHERE_ASPECT_RANGE = (0.92, 1.08)

# (points (k, 3), unit normals (k, 3), density weight in [0, 1] (k,) or None)
Sampled = tuple[np.ndarray, np.ndarray, np.ndarray | None]
Sampler = Callable[[np.random.Generator, int], Sampled]


# --------------------------------------------------------------------------------------
# Canonical surface samplers (uniform w.r.t. area unless they return a weight)
# --------------------------------------------------------------------------------------


def _unit_sphere(rng: np.random.Generator, k: int) -> Sampled:
    p = rng.standard_normal((k, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True) + 1e-12
    return p, p, None


def _sphere_at(centre: tuple[float, float, float], radius: float) -> Sampler:
    def sample(rng: np.random.Generator, k: int) -> Sampled:
        n, _, _ = _unit_sphere(rng, k)
        return n * radius + np.asarray(centre), n, None

    return sample


def _disc(z: float | tuple[float, float], r_in: float = 0.0, r_out: float = 1.0) -> Sampler:
    """Flat (annular) disc in the plane z (or a random choice between two planes)."""

    def sample(rng: np.random.Generator, k: int) -> Sampled:
        u = rng.random((k, 2))
        r = np.sqrt(r_in**2 + u[:, 0] * (r_out**2 - r_in**2))
        t = 2 * math.pi * u[:, 1]
        pair = cast("tuple[float, float]", z)  # read only when z is not a scalar
        zz = np.full(k, z) if np.isscalar(z) else np.where(rng.random(k) < 0.5, pair[0], pair[1])
        p = np.stack([r * np.cos(t), r * np.sin(t), zz], axis=1)
        n = np.zeros((k, 3))
        n[:, 2] = 1.0
        return p, n, None

    return sample


def _tube(half_height: float) -> Sampler:
    """Lateral surface of the unit-radius cylinder |z| <= half_height."""

    def sample(rng: np.random.Generator, k: int) -> Sampled:
        u = rng.random((k, 2))
        t = 2 * math.pi * u[:, 0]
        c, s = np.cos(t), np.sin(t)
        p = np.stack([c, s, half_height * (2 * u[:, 1] - 1)], axis=1)
        n = np.stack([c, s, np.zeros(k)], axis=1)
        return p, n, None

    return sample


def _cone_side(half_height: float) -> Sampler:
    """Lateral surface of a cone: base radius 1 at z=-h, apex at z=+h."""
    height = 2 * half_height
    nz = 1.0 / math.hypot(1.0, 1.0 / height) / height  # normal ~ (cos, sin, 1/H), normalised

    def sample(rng: np.random.Generator, k: int) -> Sampled:
        u = rng.random((k, 2))
        frac = np.sqrt(u[:, 0])  # distance from the apex / slant length; density ~ radius
        t = 2 * math.pi * u[:, 1]
        c, s = np.cos(t), np.sin(t)
        p = np.stack([frac * c, frac * s, half_height - frac * height], axis=1)
        nr = math.sqrt(1 - nz * nz)
        n = np.stack([nr * c, nr * s, np.full(k, nz)], axis=1)
        return p, n, None

    return sample


def _torus(minor: float) -> Sampler:
    """Torus with major radius 1; the tube angle is drawn uniformly and weighted by area."""

    def sample(rng: np.random.Generator, k: int) -> Sampled:
        u = rng.random((k, 2)) * (2 * math.pi)
        ct, st, cp, sp = np.cos(u[:, 0]), np.sin(u[:, 0]), np.cos(u[:, 1]), np.sin(u[:, 1])
        n = np.stack([cp * ct, cp * st, sp], axis=1)
        ring = 1 + minor * cp
        p = np.stack([ring * ct, ring * st, minor * sp], axis=1)
        return p, n, ring / (1 + minor)

    return sample


def _hemispheres(half_height: float) -> Sampler:
    """Two unit hemispheres capping the tube |z| <= half_height (a capsule's ends)."""

    def sample(rng: np.random.Generator, k: int) -> Sampled:
        n, _, _ = _unit_sphere(rng, k)
        p = n.copy()
        p[:, 2] += np.where(n[:, 2] >= 0, half_height, -half_height)
        return p, n, None

    return sample


def _spherical_cap(z_max: float) -> Sampler:
    """Unit-sphere zone -1 <= z <= z_max (uniform in z by Archimedes' theorem): a bowl."""

    def sample(rng: np.random.Generator, k: int) -> Sampled:
        u = rng.random((k, 2))
        z = -1 + u[:, 0] * (z_max + 1)
        rho = np.sqrt(np.clip(1 - z * z, 0, None))
        t = 2 * math.pi * u[:, 1]
        p = np.stack([rho * np.cos(t), rho * np.sin(t), z], axis=1)
        return p, p, None

    return sample


def _mesh(tri: np.ndarray) -> tuple[float, Sampler]:
    """(total area, sampler) for a triangle soup ``tri`` of shape (F, 3, 3)."""
    e1 = tri[:, 1] - tri[:, 0]
    e2 = tri[:, 2] - tri[:, 0]
    cross = np.cross(e1, e2)
    area2 = np.linalg.norm(cross, axis=1)
    cum = np.cumsum(area2)
    normals = cross / area2[:, None]

    def sample(rng: np.random.Generator, k: int) -> Sampled:
        f = np.minimum(np.searchsorted(cum, rng.random(k) * cum[-1], side="right"), len(tri) - 1)
        u = rng.random((k, 2))
        flip = u.sum(axis=1) > 1
        u[flip] = 1 - u[flip]
        p = tri[f, 0] + u[:, :1] * e1[f] + u[:, 1:] * e2[f]
        return p, normals[f], None

    return float(cum[-1]) / 2, sample


def _quads(quads: np.ndarray) -> np.ndarray:
    """(Q, 4, 3) planar quads (vertices in order) -> (2Q, 3, 3) triangles."""
    return np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])


_CUBE_QUADS = np.array(
    [
        [[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1]],
        [[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]],
        [[-1, -1, -1], [1, -1, -1], [1, -1, 1], [-1, -1, 1]],
        [[-1, 1, -1], [1, 1, -1], [1, 1, 1], [-1, 1, 1]],
        [[-1, -1, -1], [-1, 1, -1], [-1, 1, 1], [-1, -1, 1]],
        [[1, -1, -1], [1, 1, -1], [1, 1, 1], [1, -1, 1]],
    ],
    dtype=np.float64,
)
_CUBE = _mesh(_quads(_CUBE_QUADS))
_TETRA_V = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64)
_TETRA = _mesh(_TETRA_V[[[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]])


def _extrusion(poly: np.ndarray, caps: np.ndarray, half_height: float) -> tuple[float, Sampler]:
    """Prism over a 2-D polygon ``poly`` (V, 2); ``caps`` (T, 3) triangulates it."""
    lo = np.column_stack([poly, np.full(len(poly), -half_height)])
    hi = np.column_stack([poly, np.full(len(poly), half_height)])
    nxt = np.roll(np.arange(len(poly)), -1)
    sides = np.stack([lo, lo[nxt], hi[nxt], hi], axis=1)
    tri = np.concatenate([_quads(sides), lo[caps], hi[caps]])
    return _mesh(tri)


_TRIANGLE = np.array([[math.cos(a), math.sin(a)] for a in np.radians([90, 210, 330])])


def _l_polygon(t: float) -> tuple[np.ndarray, np.ndarray]:
    """An L of arm thickness ``t`` inside [0, 2]^2, centred on the origin, and its triangles."""
    poly = np.array([[0, 0], [2, 0], [2, t], [t, t], [t, 2], [0, 2]], dtype=np.float64) - 1
    caps = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 5]])
    return poly, caps


# --------------------------------------------------------------------------------------
# Classes: parts (area, sampler) and class-specific axes
# --------------------------------------------------------------------------------------


def _shape_parts(
    name: str, rng: np.random.Generator
) -> tuple[list[tuple[float, Sampler]], np.ndarray]:
    """Random class parameters -> ([(area, sampler), ...], per-axis class scale (3,))."""
    ones = np.ones(3)
    if name == "sphere":
        return [(4 * math.pi, _unit_sphere)], ones
    if name == "ellipsoid":  # prolate (1, ~0.4, ~0.4) to oblate (1, ~1, ~0.4)
        axes = np.array([1.0, rng.uniform(0.3, 1.0), rng.uniform(0.3, 0.55)])
        return [(4 * math.pi, _unit_sphere)], axes
    if name == "box":
        return [_CUBE], rng.uniform(0.45, 1.0, size=3)
    if name == "cylinder":
        h = rng.uniform(0.4, 1.5)
        return [(4 * math.pi * h, _tube(h)), (2 * math.pi, _disc((-h, h)))], ones
    if name == "cone":
        h = rng.uniform(0.5, 1.4)
        side = math.pi * math.hypot(1.0, 2 * h)
        return [(side, _cone_side(h)), (math.pi, _disc(-h))], ones
    if name == "torus":
        minor = rng.uniform(0.18, 0.45)
        return [(4 * math.pi**2 * minor, _torus(minor))], ones
    if name == "capsule":
        h = rng.uniform(0.5, 1.5)
        return [(4 * math.pi * h, _tube(h)), (4 * math.pi, _hemispheres(h))], ones
    if name == "pyramid":  # square base at z=-h, apex at z=+h
        h = rng.uniform(0.5, 1.3)
        b = np.array([[-1, -1, -h], [1, -1, -h], [1, 1, -h], [-1, 1, -h]], dtype=np.float64)
        apex = np.array([0.0, 0.0, h])
        sides = np.stack([b, np.roll(b, -1, axis=0), np.broadcast_to(apex, (4, 3))], axis=1)
        return [_mesh(np.concatenate([sides, b[[[0, 1, 2], [0, 2, 3]]]]))], ones
    if name == "tetrahedron":
        return [_TETRA], ones
    if name == "prism":
        h = rng.uniform(0.5, 1.5)
        return [_extrusion(_TRIANGLE, np.array([[0, 1, 2]]), h)], ones
    if name == "bowl":
        z_max = rng.uniform(-0.25, 0.15)
        return [(2 * math.pi * (1 + z_max), _spherical_cap(z_max))], ones
    if name == "annulus":
        r_in = rng.uniform(0.35, 0.7)
        return [(math.pi * (1 - r_in**2), _disc(0.0, r_in=r_in))], ones
    if name == "dumbbell":
        r2 = rng.uniform(0.45, 1.0)
        gap = rng.uniform(0.0, 0.8)  # the spheres never intersect
        return [
            (4 * math.pi, _sphere_at((-(1 + gap / 2), 0, 0), 1.0)),
            (4 * math.pi * r2 * r2, _sphere_at((r2 + gap / 2, 0, 0), r2)),
        ], ones
    if name == "l_shape":
        poly, caps = _l_polygon(rng.uniform(0.5, 1.0))
        return [_extrusion(poly, caps, rng.uniform(0.2, 0.5))], ones
    raise ValueError(f"unknown shape {name!r}; expected one of {CLASSES}")  # pragma: no cover


def _draw(parts: list[tuple[float, Sampler]], rng: np.random.Generator, k: int) -> Sampled:
    """k candidates from a multi-part surface, split across parts by area."""
    if len(parts) == 1:
        return parts[0][1](rng, k)
    areas = np.array([a for a, _ in parts])
    counts = rng.multinomial(k, areas / areas.sum())
    out = [fn(rng, int(c)) for (_, fn), c in zip(parts, counts, strict=True) if c > 0]
    ws = [w if w is not None else np.ones(len(p)) for p, _, w in out]
    return (
        np.concatenate([p for p, _, _ in out]),
        np.concatenate([n for _, n, _ in out]),
        np.concatenate(ws),
    )


def sample_surface(
    parts: list[tuple[float, Sampler]],
    scale: np.ndarray,
    rng: np.random.Generator,
    num_points: int,
    min_weight: float = 1.0,
) -> np.ndarray:
    """``num_points`` points uniform on the surface ``parts`` stretched by ``diag(scale)``.

    Rejection sampling: a canonical candidate with unit normal ``n`` and part weight ``w``
    is kept with probability ``w * |n / scale| / max(1 / scale)``, proportional to the
    area element after the stretch. ``min_weight`` is a lower bound on the mean of ``w``
    (only used to size the batches of candidates). Returns float64 (num_points, 3).
    """
    inv = 1.0 / scale
    w_max = inv.max()  # |diag(scale)^-1 n| <= 1 / min(scale) for a unit normal n
    chunks: list[np.ndarray] = []
    have = 0
    while have < num_points:
        # the acceptance rate is at least min_weight * min(scale) / max(scale)
        want = num_points - have
        k = int(1.3 * want * scale.max() * w_max / min_weight) + 64
        p, n, w = _draw(parts, rng, k)
        keep = np.linalg.norm(n * inv, axis=1) / w_max
        if w is not None:
            keep *= w
        p = p[rng.random(k) < keep]
        p = p[rng.permutation(len(p))[:want]]  # random subset, random order across parts
        chunks.append(p)
        have += len(p)
    return (chunks[0] if len(chunks) == 1 else np.concatenate(chunks)) * scale


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation matrix (3, 3) from a random unit quaternion."""
    w, x, y, z = (q := rng.standard_normal(4)) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def sample_shape(rng: np.random.Generator, label: int, num_points: int) -> np.ndarray:
    """Surface point cloud float32 (num_points, 3) of class ``CLASSES[label]``, unit sphere.

    Steps: class-specific random parameters; per-axis stretch ``class_axes * U(ASPECT_RANGE)``
    (narrower for spheres) with area-uniform rejection sampling; a smooth deformation (two
    random sinusoidal displacement fields, amplitude <= 6% of the size); a uniformly random
    rotation; random overall size U(0.5, 2) with Gaussian noise of std U(0.2%, 1%) of that
    size; centring on the centroid and division by the largest radius.
    """
    name = CLASSES[label]
    parts, axes = _shape_parts(name, rng)
    lo, hi = _SPHERE_ASPECT_RANGE if name == "sphere" else ASPECT_RANGE
    scale = axes * rng.uniform(lo, hi, size=3)
    p = sample_surface(parts, scale, rng, num_points, min_weight=0.6 if name == "torus" else 1.0)

    # smooth deformation: p += a * sin(omega * <p, d> + phi) * e, two random fields
    d = rng.standard_normal((2, 3))
    e = rng.standard_normal((2, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    amp = rng.uniform(0.0, 0.06, size=2)
    omega = rng.uniform(1.0, 3.0, size=2)
    phase = rng.uniform(0.0, 2 * math.pi, size=2)
    p = p + (amp * np.sin(p @ d.T * omega + phase)) @ e

    size = rng.uniform(0.5, 2.0)
    p = p @ (_random_rotation(rng).T * size)
    p += rng.standard_normal(p.shape) * (size * rng.uniform(0.002, 0.01))
    p -= p.mean(axis=0)
    p /= np.sqrt((p * p).sum(axis=1).max())
    return p.astype(np.float32)


class SyntheticShapes3D(SeededSamples, Dataset):
    """Procedural surface point clouds of ``len(CLASSES)`` primitive shapes (no download).

    Sample ``i`` is a pure function of ``(seed, split, i, num_points)``: drawn from
    ``numpy.random.default_rng([seed, split_id, i])`` (split_id 0 "train", 1 "test"); its
    class is ``i % len(CLASSES)`` so every split is balanced. Returns ``{"points":
    FloatTensor (num_points, 3) inside the unit sphere, "label": int, "skipped": 0}``.
    """

    classes = CLASSES

    def __init__(
        self, num_samples: int, num_points: int = 1024, seed: int = 0, split: str = "train"
    ) -> None:
        SeededSamples.__init__(self, num_samples, seed, split, _SPLIT_IDS)
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.num_points = num_points

    @property
    def num_classes(self) -> int:
        return len(CLASSES)

    def generate(self, idx: int) -> tuple[np.ndarray, int]:
        """(points float32 (num_points, 3), label) of sample ``idx``."""
        idx, rng = self.rng(idx)
        label = idx % len(CLASSES)
        return sample_shape(rng, label, self.num_points), label

    def __getitem__(self, idx: int) -> dict[str, Any]:
        points, label = self.generate(idx)
        return {"points": torch.from_numpy(points), "label": label, "skipped": 0}
