"""Procedural street scenes and a vectorised rotating-LiDAR ray caster (numpy only).

A :class:`Scene` is a ground plane plus yaw-rotated boxes (cars, buildings) and vertical
cylinders (poles, tree trunks). :func:`make_street_scene` draws one from a numpy ``Generator``;
:func:`raycast` intersects a (beam x azimuth) grid of rays from the sensor at the origin with it;
:func:`simulate_sweep` adds range limits, dropout, range noise and intensities.

Frame: x forward (along the road), y left, z up, sensor at the origin, ground at ``z = -1.7``
(the sensor is ~1.7 m above the road, like KITTI's Velodyne at 1.73 m).

Ray casting is vectorised over (ray, primitive) pairs: each primitive is first reduced to the
azimuth columns it can cover (its angular extent seen from the sensor, found with
``searchsorted``), then all candidate pairs are intersected at once (slab method in the box's
local frame, quadratic for cylinders), the ground plane is intersected analytically for every
ray, and each ray keeps its nearest hit (``np.minimum.at``). No Python loop runs over rays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "BUILDING",
    "CAR",
    "GROUND",
    "LABEL_NAMES",
    "POLE",
    "LidarSensor",
    "RayHits",
    "Scene",
    "make_street_scene",
    "raycast",
    "simulate_sweep",
]

GROUND, CAR, BUILDING, POLE = 0, 1, 2, 3
LABEL_NAMES = ("ground", "car", "building", "pole")
GROUND_Z = -1.7
_TWO_PI = 2.0 * np.pi


@dataclass
class Scene:
    """Primitives of one scene (float64 arrays).

    ``boxes`` (K, 7): centre x, y, z, size l (local x), w (local y), h, yaw (rad, about z);
    ``cylinders`` (M, 5): centre x, y, radius, z_bottom, z_top (vertical, side surface only);
    ``*_labels`` int64 and ``*_reflectivity`` in [0, 1] per primitive. ``ground_z`` is the
    height of the ground plane (``None``: no ground). Ground reflectivity is asphalt on the road
    (``|y - road_y| < road_half_width``), brighter lane markings, and pavement outside.
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)))
    box_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    box_reflectivity: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cylinders: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    cylinder_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cylinder_reflectivity: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ground_z: float | None = GROUND_Z
    road_y: float = 0.0
    road_half_width: float = 8.75

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 7)
        self.cylinders = np.asarray(self.cylinders, dtype=np.float64).reshape(-1, 5)
        k, m = len(self.boxes), len(self.cylinders)
        self.box_labels = np.broadcast_to(np.asarray(self.box_labels, np.int64), (k,)).copy()
        self.box_reflectivity = np.broadcast_to(
            np.asarray(self.box_reflectivity, float), (k,)
        ).copy()
        self.cylinder_labels = np.broadcast_to(
            np.asarray(self.cylinder_labels, np.int64), (m,)
        ).copy()
        self.cylinder_reflectivity = np.broadcast_to(
            np.asarray(self.cylinder_reflectivity, float), (m,)
        ).copy()

    def ground_reflectivity(self, xy: np.ndarray) -> np.ndarray:
        """Reflectivity of the ground at points ``xy`` (N, 2): asphalt, lane marks, pavement."""
        y = xy[:, 1] - self.road_y
        refl = np.where(np.abs(y) < self.road_half_width, 0.12, 0.3)
        solid = np.abs(np.abs(y) - 7.0) < 0.08  # edge lines between lanes and parking strips
        dashed = (np.abs(np.abs(y) - 3.5) < 0.075) & (np.mod(xy[:, 0], 9.0) < 3.0)
        center = np.abs(y) < 0.1
        return np.where(solid | dashed | center, 0.75, refl)


@dataclass(frozen=True)
class LidarSensor:
    """A rotating multi-beam LiDAR at the origin.

    ``elevation_deg`` (lowest, highest) beam angles; ``None``: HDL-32E (-30.67, +10.67) for
    32 beams, else HDL-64-like (-24.9, +2.0), beams equally spaced. ``azimuth_res_deg`` is the
    horizontal step (0.3 deg -> 1200 columns; real HDL-32E at 10 Hz: ~0.16 deg). Returns closer
    than ``min_range`` or farther than ``max_range`` (m) are discarded, a fraction ``dropout`` of
    the rest is dropped at random, ranges get N(0, ``range_noise``) noise and intensities
    N(0, ``intensity_noise``).
    """

    beams: int = 32
    elevation_deg: tuple[float, float] | None = None
    azimuth_res_deg: float = 0.3
    min_range: float = 1.0
    max_range: float = 80.0
    dropout: float = 0.07
    range_noise: float = 0.02
    intensity_noise: float = 0.02

    def __post_init__(self) -> None:
        if self.beams < 1:
            raise ValueError(f"beams must be >= 1, got {self.beams}")
        if not 0 < self.azimuth_res_deg <= 45:
            raise ValueError(f"azimuth_res_deg must be in (0, 45], got {self.azimuth_res_deg}")
        if not 0 <= self.min_range < self.max_range:
            raise ValueError(
                f"need 0 <= min_range < max_range, got {self.min_range}, {self.max_range}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def elevations(self) -> np.ndarray:
        """Beam elevation angles in radians, lowest first (beams,)."""
        lo, hi = self.elevation_deg or ((-30.67, 10.67) if self.beams == 32 else (-24.9, 2.0))
        return np.deg2rad(np.linspace(lo, hi, self.beams))

    def azimuths(self, phase: float = 0.0) -> np.ndarray:
        """Sorted azimuths in [-pi, pi): ``-pi + (phase + k) * step``, ``phase`` in [0, 1)."""
        n = max(1, int(round(360.0 / self.azimuth_res_deg)))
        return -np.pi + (np.arange(n) + phase) * (_TWO_PI / n)


# --------------------------------------------------------------------------------------
# Scene generation
# --------------------------------------------------------------------------------------


def _row(
    rng: np.random.Generator,
    start: float,
    stop: float,
    length: tuple[float, float],
    gap: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Objects in a row along x: (centres, lengths) with lengths ~U(length), gaps ~U(gap)."""
    n = int((stop - start) / (np.mean(length) + gap[0])) + 2
    lens = rng.uniform(*length, n)
    gaps = rng.uniform(*gap, n)
    ends = start + np.cumsum(lens + gaps)
    centres = ends - lens / 2
    keep = ends <= stop
    return centres[keep], lens[keep]


def make_street_scene(rng: np.random.Generator) -> Scene:
    """A random street: 4 lanes (+ parking strips) along x, cars, buildings, poles, trees."""
    road_y = float(rng.choice([-5.25, -1.75, 1.75, 5.25]))  # the sensor drives in one lane
    boxes, blabels, brefl = [], [], []

    # Cars in the 4 lanes (|lane| 1.75 / 5.25) and parked in the 2 strips (|y| 7.9).
    lanes = road_y + np.array([-5.25, -1.75, 1.75, 5.25, -7.9, 7.9])
    for j, lane_y in enumerate(lanes):
        parked = j >= 4
        xs, lens = _row(rng, -75.0, 75.0, (3.8, 5.0), (2.0, 40.0) if parked else (5.0, 45.0))
        n = len(xs)
        ys = lane_y + rng.normal(0, 0.15 if parked else 0.25, n)
        clear = (np.abs(xs) > 3.5 + lens / 2) | (np.abs(ys) > 2.2)  # keep off the ego car
        heading = 0.0 if lane_y - road_y < 0 else np.pi
        yaw = heading + rng.normal(0, 0.04, n)
        if parked:
            yaw = np.where(
                rng.random(n) < 0.25,
                rng.uniform(-np.pi, np.pi, n),
                rng.choice([0.0, np.pi], n) + rng.normal(0, 0.1, n),
            )
        w = rng.uniform(1.65, 2.0, n)
        h = rng.uniform(1.35, 1.75, n)
        cz = GROUND_Z + 0.2 + h / 2  # 0.2 m ground clearance
        boxes.append(np.stack([xs, ys, cz, lens, w, h, yaw], 1)[clear])
        blabels.append(np.full(int(clear.sum()), CAR))
        brefl.append(rng.uniform(0.25, 0.6, n)[clear])

    # Buildings on both sides beyond the pavement.
    for side in (-1.0, 1.0):
        xs, lens = _row(rng, -110.0, 110.0, (8.0, 35.0), (1.0, 14.0))
        n = len(xs)
        setback = rng.uniform(12.5, 20.0, n)
        depth = rng.uniform(8.0, 20.0, n)
        h = rng.uniform(4.0, 25.0, n)
        ys = road_y + side * (setback + depth / 2)
        boxes.append(
            np.stack([xs, ys, GROUND_Z + h / 2, lens, depth, h, rng.normal(0, 0.03, n)], 1)
        )
        blabels.append(np.full(n, BUILDING))
        brefl.append(rng.uniform(0.15, 0.5, n))

    # Poles (lamp posts, signs) and tree trunks on the pavement; both labelled POLE.
    cyl, crefl = [], []
    for side in (-1.0, 1.0):
        for radius, height, gap, off, refl in (
            ((0.08, 0.2), (4.0, 9.0), (12.0, 35.0), (9.3, 10.0), (0.35, 0.65)),  # poles
            ((0.15, 0.35), (2.5, 6.0), (4.0, 20.0), (10.3, 11.8), (0.15, 0.35)),  # trunks
        ):
            xs, _ = _row(rng, -90.0, 90.0, (0.5, 0.5), gap)
            n = len(xs)
            ys = road_y + side * rng.uniform(*off, n)
            cyl.append(
                np.stack(
                    [
                        xs,
                        ys,
                        rng.uniform(*radius, n),
                        np.full(n, GROUND_Z),
                        GROUND_Z + rng.uniform(*height, n),
                    ],
                    1,
                )
            )
            crefl.append(rng.uniform(*refl, n))
    cylinders = np.concatenate(cyl)
    return Scene(
        boxes=np.concatenate(boxes),
        box_labels=np.concatenate(blabels),
        box_reflectivity=np.concatenate(brefl),
        cylinders=cylinders,
        cylinder_labels=np.full(len(cylinders), POLE),
        cylinder_reflectivity=np.concatenate(crefl),
        road_y=road_y,
    )


# --------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------


@dataclass
class RayHits:
    """Nearest hit of every ray of the (azimuth, beam) grid, flattened azimuth-major.

    ``t`` (R,) distance (``inf``: no hit), ``label`` (R,) int64 (-1: no hit), ``normal`` (R, 3)
    unit surface normal facing the sensor side, ``reflectivity`` (R,), ``dirs`` (R, 3) unit ray
    directions. Ray ``r`` has azimuth index ``r // beams`` and beam ``r % beams``.
    """

    t: np.ndarray
    label: np.ndarray
    normal: np.ndarray
    reflectivity: np.ndarray
    dirs: np.ndarray


def _wrap(a: np.ndarray) -> np.ndarray:
    return np.mod(a + np.pi, _TWO_PI) - np.pi


def _column_pairs(az: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(primitive index, azimuth column) pairs for the sorted ``az`` inside [lo_p, hi_p].

    ``lo <= hi``, ``hi - lo <= 2 pi``; intervals may start anywhere and wrap around +-pi.
    """
    span = np.minimum(hi - lo, _TWO_PI)
    lo = _wrap(lo)
    hi = lo + span
    end1 = np.minimum(hi, np.pi)
    s1 = np.searchsorted(az, lo, "left")
    e1 = np.searchsorted(az, end1, "right")
    s2 = np.zeros_like(s1)
    e2 = np.where(hi > np.pi, np.searchsorted(az, hi - _TWO_PI, "right"), 0)
    e2 = np.minimum(e2, s1)  # a full circle must not repeat columns
    starts = np.concatenate([s1, s2])
    lens = np.maximum(np.concatenate([e1, e2]) - starts, 0)
    prim = np.tile(np.arange(len(lo)), 2)
    total = int(lens.sum())
    seg = np.repeat(np.arange(len(starts)), lens)
    offsets = np.cumsum(lens) - lens
    cols = starts[seg] + (np.arange(total) - offsets[seg])
    return prim[seg], cols


def _expand_beams(prim: np.ndarray, cols: np.ndarray, beams: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (primitive, column) pair times every beam: (primitive, ray index)."""
    ray = (cols[:, None] * beams + np.arange(beams)).ravel()
    return np.repeat(prim, beams), ray


def _box_hits(scene: Scene, az: np.ndarray, dirs: np.ndarray, beams: int):
    b = scene.boxes
    if len(b) == 0:
        return None
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    hl, hw = b[:, 3] / 2, b[:, 4] / 2
    # Footprint corners -> angular extent seen from the origin (exact for a convex polygon).
    cx = (
        b[:, 0:1]
        + c[:, None] * (hl[:, None] * [1, 1, -1, -1])
        - s[:, None] * (hw[:, None] * [1, -1, 1, -1])
    )
    cy = (
        b[:, 1:2]
        + s[:, None] * (hl[:, None] * [1, 1, -1, -1])
        + c[:, None] * (hw[:, None] * [1, -1, 1, -1])
    )
    mid = np.arctan2(b[:, 1], b[:, 0])
    d = _wrap(np.arctan2(cy, cx) - mid[:, None])
    # Sensor inside the footprint (not expected): test every column.
    ox, oy = -(c * b[:, 0] + s * b[:, 1]), -(-s * b[:, 0] + c * b[:, 1])
    inside = (np.abs(ox) <= hl) & (np.abs(oy) <= hw)
    lo = np.where(inside, -np.pi, mid + d.min(1) - 1e-9)
    hi = np.where(inside, np.pi, mid + d.max(1) + 1e-9)
    prim, ray = _expand_beams(*_column_pairs(az, lo, hi), beams)
    if len(ray) == 0:
        return None
    dw = dirs[ray]
    cp, sp = c[prim], s[prim]
    dl = np.stack([cp * dw[:, 0] + sp * dw[:, 1], -sp * dw[:, 0] + cp * dw[:, 1], dw[:, 2]], 1)
    ol = np.stack([ox[prim], oy[prim], -b[prim, 2]], 1)
    half = b[prim, 3:6] / 2
    dl = np.where(np.abs(dl) < 1e-12, 1e-12, dl)
    inv = 1.0 / dl
    t1, t2 = (-half - ol) * inv, (half - ol) * inv
    tmin = np.minimum(t1, t2)
    tnear, axis = tmin.max(1), tmin.argmax(1)
    tfar = np.maximum(t1, t2).min(1)
    hit = (tnear <= tfar) & (tnear > 0)
    prim, ray, tnear, axis = prim[hit], ray[hit], tnear[hit], axis[hit]
    # Normal of the entry face, -sign(d) along the slab axis, back to the world frame.
    sgn = -np.sign(dl[hit, axis])
    nl = np.zeros((len(ray), 3))
    nl[np.arange(len(ray)), axis] = sgn
    cp, sp = c[prim], s[prim]
    normal = np.stack([cp * nl[:, 0] - sp * nl[:, 1], sp * nl[:, 0] + cp * nl[:, 1], nl[:, 2]], 1)
    return ray, tnear, scene.box_labels[prim], normal, scene.box_reflectivity[prim]


def _cylinder_hits(scene: Scene, az: np.ndarray, dirs: np.ndarray, beams: int):
    cyl = scene.cylinders
    if len(cyl) == 0:
        return None
    dist = np.hypot(cyl[:, 0], cyl[:, 1])
    mid = np.arctan2(cyl[:, 1], cyl[:, 0])
    inside = dist <= cyl[:, 2]
    half = np.arcsin(np.clip(cyl[:, 2] / np.maximum(dist, 1e-12), 0, 1))
    lo = np.where(inside, -np.pi, mid - half - 1e-9)
    hi = np.where(inside, np.pi, mid + half + 1e-9)
    prim, ray = _expand_beams(*_column_pairs(az, lo, hi), beams)
    if len(ray) == 0:
        return None
    d = dirs[ray]
    cx, cy, r = cyl[prim, 0], cyl[prim, 1], cyl[prim, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    bh = d[:, 0] * cx + d[:, 1] * cy  # b = -2 bh
    cc = cx * cx + cy * cy - r * r
    disc = bh * bh - a * cc
    ok = (disc >= 0) & (a > 1e-12)
    t = (bh - np.sqrt(np.where(ok, disc, 0))) / np.where(ok, a, 1)
    z = t * d[:, 2]
    hit = ok & (t > 0) & (z >= cyl[prim, 3]) & (z <= cyl[prim, 4])
    prim, ray, t = prim[hit], ray[hit], t[hit]
    d = d[hit]
    normal = np.stack(
        [
            (t * d[:, 0] - cyl[prim, 0]) / cyl[prim, 2],
            (t * d[:, 1] - cyl[prim, 1]) / cyl[prim, 2],
            np.zeros(len(t)),
        ],
        1,
    )
    return ray, t, scene.cylinder_labels[prim], normal, scene.cylinder_reflectivity[prim]


def raycast(scene: Scene, elevations: np.ndarray, azimuths: np.ndarray) -> RayHits:
    """Nearest hit of each ray (azimuth a, elevation e) from the origin, all rays at once.

    ``azimuths`` must be sorted and inside [-pi, pi). Rays are ordered azimuth-major
    (``r = a * beams + e``), the firing order of a spinning sensor.
    """
    el = np.asarray(elevations, dtype=np.float64)
    az = np.asarray(azimuths, dtype=np.float64)
    if np.any(np.diff(az) < 0) or az.size and (az[0] < -np.pi or az[-1] >= np.pi):
        raise ValueError("azimuths must be sorted and inside [-pi, pi)")
    beams = len(el)
    ce, se = np.cos(el), np.sin(el)
    dirs = np.stack(
        [np.cos(az)[:, None] * ce, np.sin(az)[:, None] * ce, np.broadcast_to(se, (len(az), beams))],
        -1,
    ).reshape(-1, 3)
    n = len(dirs)
    t = np.full(n, np.inf)
    label = np.full(n, -1, dtype=np.int64)
    normal = np.zeros((n, 3))
    refl = np.zeros(n)
    if scene.ground_z is not None:
        down = dirs[:, 2] * np.sign(scene.ground_z) > 1e-12
        tg = scene.ground_z / np.where(down, dirs[:, 2], 1.0)
        t = np.where(down, tg, np.inf)
        label[down] = GROUND
        normal[down] = (0.0, 0.0, 1.0 if scene.ground_z < 0 else -1.0)
        refl[down] = scene.ground_reflectivity(dirs[down, :2] * tg[down, None])
    hits = [
        h for h in (_box_hits(scene, az, dirs, beams), _cylinder_hits(scene, az, dirs, beams)) if h
    ]
    if hits:
        ray, th, lab, nrm, rf = (np.concatenate(x) for x in zip(*hits, strict=True))
        np.minimum.at(t, ray, th)
        win = th == t[ray]  # the nearest primitive of its ray (ties: any one of them)
        label[ray[win]], normal[ray[win]], refl[ray[win]] = lab[win], nrm[win], rf[win]
    return RayHits(t, label, normal, refl, dirs)


def simulate_sweep(
    scene: Scene, sensor: LidarSensor, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One sweep of ``sensor`` in ``scene``: (points float32 (N, 4) x, y, z, intensity, labels
    int64 (N,)). The azimuth phase, dropout and noise come from ``rng``.

    Intensity = reflectivity * (0.2 + 0.8 |cos(incidence)|) + noise, clipped to [0, 1].
    """
    hits = raycast(scene, sensor.elevations(), sensor.azimuths(rng.random()))
    keep = (hits.t >= sensor.min_range) & (hits.t <= sensor.max_range)
    if sensor.dropout > 0:
        keep &= rng.random(len(keep)) >= sensor.dropout
    idx = np.flatnonzero(keep)
    d = hits.dirs[idx]
    r = hits.t[idx]
    if sensor.range_noise > 0:
        r = r + rng.normal(0.0, sensor.range_noise, len(idx))
    cos_inc = np.abs((d * hits.normal[idx]).sum(1))
    inten = hits.reflectivity[idx] * (0.2 + 0.8 * cos_inc)
    if sensor.intensity_noise > 0:
        inten = inten + rng.normal(0.0, sensor.intensity_noise, len(idx))
    pts = np.empty((len(idx), 4), dtype=np.float32)
    pts[:, :3] = d * r[:, None]
    pts[:, 3] = np.clip(inten, 0.0, 1.0)
    return pts, hits.label[idx]
