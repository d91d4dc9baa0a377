"""LiDAR sweeps (procedural, KITTI, nuScenes, Waymo), voxelised per sample, and their DataModule.

Every dataset returns ``{"points": FloatTensor (N, 4) x, y, z, intensity, "labels": LongTensor
(N,), "frame_id": str, "skipped": int}``; labels are 0 ground / 1 car / 2 building / 3 pole for
:class:`SyntheticLidar` and -1 (unknown) for real data. Given a :class:`VoxelGrid`, the sample is
also voxelised in ``__getitem__`` (so in the DataLoader workers) with
:func:`maskfm.tokens.voxelize.voxelize` and gets ``"voxel_features"`` (V, 4) (MeanVFE),
``"voxel_coords"`` (V, 3) int32 (z, y, x), ``"voxel_num_points"`` (V,) int32 and
``"point_voxel_idx"`` (N,) int64 (-1: dropped). :func:`collate_lidar` builds the batch.

On-disk formats (reference lidar.md §3), read without pickled info files:

* KITTI: ``<root>/training/velodyne/%06d.bin`` (``testing/`` for split "test"), float32 x 4 =
  x, y, z, reflectance in [0, 1], kept as is. ``<root>/ImageSets/<split>.txt`` lists the ids.
* nuScenes: ``<root>/samples/LIDAR_TOP/*.pcd.bin`` (key frames only, no sweeps), float32 x 5 =
  x, y, z, intensity 0-255, ring index 0-31. We keep x, y, z and **intensity / 255** (so all
  sources have intensity in [0, 1]; OpenPCDet and mmdet3d keep 0-255) and drop the ring index
  (:data:`NUSCENES_COLUMNS`). An optional ``<root>/ImageSets/<split>.txt`` lists file names.
* Waymo, as converted by OpenPCDet: ``<root>/[waymo_processed_data_v0_5_0/]<segment>/%04d.npy``,
  float32 (N, 6) = x, y, z, intensity, elongation, NLZ flag (:data:`WAYMO_COLUMNS`). As
  OpenPCDet's ``get_lidar`` we apply ``tanh`` to the intensity; we keep x, y, z, tanh(intensity)
  and drop elongation and the NLZ flag. All points are kept, as with R-MAE's
  ``DISABLE_NLZ_FLAG_ON_POINTS: True``; ``drop_nlz_points=True`` keeps only points whose flag is
  -1 (outside no-label zones; upstream OpenPCDet's default). An optional
  ``<root>/ImageSets/<split>.txt`` lists segment names (``.tfrecord`` suffix allowed), as
  OpenPCDet's.

Without a split list, every file is used (for every split) and a warning is logged.

Bad input raises :class:`~maskfm.data.points.CorruptPointCloudError` naming the file: a size that
is not a whole number of records, a ``.bin`` whose values are implausible for its format (written
as float64 or with another column count, see :func:`check_plausible`), an unreadable or mis-shaped
``.npy``, no points, NaN/inf values, or (given a grid) no point inside the grid's
``point_cloud_range`` or fewer than ``min_voxels`` non-empty voxels (:data:`MIN_VOXELS`). A
listed file that does not exist raises ``FileNotFoundError``. With ``skip_corrupt=True`` such
sweeps are skipped: the next usable one is returned and ``"skipped"`` counts how many were passed
over.
"""

from __future__ import annotations

import logging
import math
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from maskfm.data.base import LoaderDataModule, load_or_skip
from maskfm.data.lidar_scenes import LABEL_NAMES, LidarSensor, make_street_scene, simulate_sweep
from maskfm.data.points import CorruptPointCloudError
from maskfm.tokens.voxelize import PRESETS, VoxelGrid, Voxels, batch_voxels, voxelize

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "LABEL_NAMES",
    "NUSCENES_COLUMNS",
    "WAYMO_COLUMNS",
    "CorruptPointCloudError",
    "GlobalAugment",
    "KittiVelodyne",
    "LidarDataModule",
    "MIN_VOXELS",
    "NuScenesLidar",
    "SyntheticLidar",
    "WaymoNpy",
    "check_plausible",
    "collate_lidar",
    "read_bin",
    "resolve_grid",
]

DATASETS = ("synthetic", "kitti", "nuscenes", "waymo")
NUSCENES_COLUMNS = ("x", "y", "z", "intensity", "ring")  # on disk; we keep x, y, z, intensity/255
WAYMO_COLUMNS = ("x", "y", "z", "intensity", "elongation", "nlz_flag")  # keep x, y, z, tanh(int.)
_SPLIT = re.compile(r"^[\w.-]+$")

# Fewest non-empty voxels a sweep must fill (given a grid) to be served. R-MAE's sparse backbone
# needs at least 2 visible voxels per batch (BatchNorm in training; with none, spconv stops on a
# C++ "tensor must not empty" assertion), and its radial masking keeps only 10 % of the occupied
# 1-degree sectors, so a sweep alone needs >= 20 voxels spread over >= 10 sectors. 100 leaves a
# margin; real sweeps fill 10^4 voxels or more. ``min_voxels=1`` keeps only the in-range check.
MIN_VOXELS = 100

# Raw .bin sweeps have no header, so a file written as float64 or with another column count reads
# as garbage of a valid size. It shows in the magnitudes: no LiDAR returns points beyond
# MAX_RANGE_M (KITTI/nuScenes sensors reach ~100-200 m) and the intensity column has a fixed
# range. A file where more than _IMPLAUSIBLE_FRACTION of the points break this is refused
# (misread files break it for 25-100 % of their points; a stray point is dropped by the grid).
MAX_RANGE_M = 1000.0
_IMPLAUSIBLE_FRACTION = 0.05


# --------------------------------------------------------------------------------------
# Readers and checks
# --------------------------------------------------------------------------------------


def read_bin(path: str | os.PathLike, num_columns: int) -> np.ndarray:
    """Read a raw little-endian float32 point file as (N, num_columns); checks the size."""
    path = Path(path)
    record = 4 * num_columns
    try:
        size = path.stat().st_size
        if size % record:
            raise CorruptPointCloudError(
                f"'{path}': size {size} bytes is not a multiple of {record} "
                f"(float32 x {num_columns} per point; written with another dtype or column count?)"
            )
        return np.fromfile(path, dtype="<f4").reshape(-1, num_columns)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CorruptPointCloudError(f"cannot read '{path}': {type(e).__name__}: {e}") from e


def check_plausible(
    raw: np.ndarray, path: str | os.PathLike, columns: Sequence[str], intensity_max: float
) -> None:
    """Refuse a ``.bin`` read as (N, len(columns)) float32 whose values cannot be a sweep.

    Flags files where more than 5 % (``_IMPLAUSIBLE_FRACTION``) of the points have |x|, |y| or
    |z| > :data:`MAX_RANGE_M` or the intensity (4th column) outside ``[0, intensity_max]``: what
    float64 files or files with a different column count look like when read as float32 x
    ``len(columns)``.
    """
    xyz, intensity = raw[:, :3], raw[:, 3]
    bad = (np.abs(xyz) > MAX_RANGE_M).any(axis=1) | (intensity < 0) | (intensity > intensity_max)
    if len(raw) and bad.mean() > _IMPLAUSIBLE_FRACTION:
        row = int(np.flatnonzero(bad)[0])
        values = ", ".join(f"{v:.4g}" for v in raw[row])
        raise CorruptPointCloudError(
            f"'{path}': values implausible for float32 {', '.join(columns)}: {int(bad.sum())} of "
            f"{len(raw)} points have |x|, |y| or |z| > {MAX_RANGE_M:g} m or {columns[3]} outside "
            f"[0, {intensity_max:g}] (first at row {row}: [{values}]); maybe written as float64 "
            "or with a different column count"
        )


def _read_waymo_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise CorruptPointCloudError(f"cannot read '{path}': {type(e).__name__}: {e}") from e
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != len(WAYMO_COLUMNS):
        raise CorruptPointCloudError(
            f"'{path}': expected a float (N, 6) array {WAYMO_COLUMNS}, got "
            f"{getattr(arr, 'dtype', type(arr).__name__)} {getattr(arr, 'shape', '')}"
        )
    if arr.dtype.kind != "f":
        raise CorruptPointCloudError(f"'{path}': expected float32 values, got dtype {arr.dtype}")
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise CorruptPointCloudError(
            f"'{name}' has {int(bad.sum())} points with NaN/inf values "
            f"(first at row {int(np.flatnonzero(bad)[0])})"
        )


def _read_list(path: Path) -> list[str]:
    entries = [s.strip() for s in path.read_text().splitlines() if s.strip()]
    if not entries:
        raise CorruptPointCloudError(f"split list '{path}' is empty")
    return entries


def _check_root(root: str | os.PathLike | None, what: str) -> Path:
    if root is None:
        raise ValueError(f"{what} root is required (got None)")
    p = Path(root).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what} root '{p}' does not exist or is not a directory")
    return p


def _split_list(root: Path, split: str | None, what: str, n_all: int) -> list[str] | None:
    """Entries of ``<root>/ImageSets/<split>.txt``, or None (= use every file, logged)."""
    if split is None:
        return None
    if not _SPLIT.match(split):
        raise ValueError(f"invalid split name {split!r}")
    path = root / "ImageSets" / f"{split}.txt"
    if path.is_file():
        return _read_list(path)
    log.warning("%s: no split list '%s'; using all %d files for split %r", what, path, n_all, split)
    return None


# --------------------------------------------------------------------------------------
# Augmentation (optional, off by default)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlobalAugment:
    """OpenPCDet's global augmentations, in its order: flip along x (y -> -y, p = 0.5),
    rotation about z ~U(rotation), scaling ~U(scale). Uses torch's RNG (seeded per worker)."""

    flip: bool = True
    rotation: tuple[float, float] = (-math.pi / 4, math.pi / 4)
    scale: tuple[float, float] = (0.95, 1.05)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        pts = points.clone()
        u = torch.rand(3)
        if self.flip and u[0] < 0.5:
            pts[:, 1] = -pts[:, 1]
        a = self.rotation[0] + (self.rotation[1] - self.rotation[0]) * float(u[1])
        c, s = math.cos(a), math.sin(a)
        x, y = pts[:, 0].clone(), pts[:, 1].clone()
        pts[:, 0], pts[:, 1] = c * x - s * y, s * x + c * y
        pts[:, :3] *= self.scale[0] + (self.scale[1] - self.scale[0]) * float(u[2])
        return pts


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------


class _LidarDataset(Dataset):
    """Shared ``__getitem__``: load sweep j (skipping unusable ones), check, voxelise.

    ``grid`` (a :class:`VoxelGrid` or preset name) enables the in-range check and voxelisation;
    ``max_points_per_voxel`` defaults to the grid's, ``max_voxels=None`` keeps all voxels. A sweep
    whose in-range points fill fewer than ``min_voxels`` voxels is unusable (:data:`MIN_VOXELS`).
    ``shuffle_points`` permutes the points before voxelisation (OpenPCDet's ``shuffle_points``
    for training; it changes which points and voxels the limits keep), ``augment`` is applied
    before that.
    """

    def __init__(
        self,
        grid: VoxelGrid | str | None = None,
        max_points_per_voxel: int | None = None,
        max_voxels: int | None = None,
        skip_corrupt: bool = False,
        shuffle_points: bool = False,
        augment: GlobalAugment | None = None,
        min_voxels: int = MIN_VOXELS,
    ) -> None:
        if min_voxels < 0:
            raise ValueError(f"min_voxels must be >= 0, got {min_voxels}")
        self.grid = resolve_grid(grid) if isinstance(grid, str) else grid
        self.min_voxels = min_voxels
        self.max_points_per_voxel = max_points_per_voxel
        self.max_voxels = max_voxels
        self.skip_corrupt = skip_corrupt
        self.shuffle_points = shuffle_points
        self.augment = augment
        self._bad: set[int] = set()  # per process (each DataLoader worker has its own)

    def _describe(self) -> str:  # pragma: no cover - overridden
        return type(self).__name__

    def _load(self, idx: int) -> tuple[np.ndarray, np.ndarray | None, str]:  # pragma: no cover
        """(points float32 (N, 4), labels int64 (N,) or None, name for messages / frame_id)."""
        raise NotImplementedError

    def _check(self, points: np.ndarray, name: str) -> None:
        if len(points) == 0:
            raise CorruptPointCloudError(f"'{name}' contains no points")
        _check_finite(points, name)
        if self.grid is None:
            return
        coords, inside = self.grid.voxel_coords(torch.from_numpy(points))
        if not bool(inside.any()):
            raise CorruptPointCloudError(
                f"'{name}': none of its {len(points)} points lies inside point_cloud_range "
                f"{list(self.grid.point_cloud_range)} of the {self.grid.name!r} grid"
            )
        gx, gy, _ = self.grid.grid_size
        c = coords[inside]
        filled = len(torch.unique((c[:, 2] * gy + c[:, 1]) * gx + c[:, 0]))
        if filled < self.min_voxels:
            raise CorruptPointCloudError(
                f"'{name}': its {len(c)} points inside point_cloud_range fill only {filled} "
                f"voxels of the {self.grid.name!r} grid, fewer than min_voxels={self.min_voxels} "
                "(too few for the sparse voxel backbone)"
            )

    def _load_checked(self, idx: int) -> tuple[np.ndarray, np.ndarray | None, str]:
        points, labels, name = self._load(idx)
        self._check(points, name)
        return points, labels, name

    def __getitem__(self, idx: int) -> dict[str, Any]:
        _, (points, labels, name), skipped = load_or_skip(
            idx, len(self), self._load_checked, self._bad, self.skip_corrupt,
            (CorruptPointCloudError, FileNotFoundError), f"sweeps of {self._describe()}",
            CorruptPointCloudError,
        )
        return self._sample(points, labels, name, skipped)

    def _sample(
        self, points: np.ndarray, labels: np.ndarray | None, name: str, skipped: int
    ) -> dict[str, Any]:
        pts = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
        lab = (
            torch.full((len(pts),), -1, dtype=torch.long)
            if labels is None
            else torch.from_numpy(np.asarray(labels, dtype=np.int64))
        )
        if self.augment is not None:
            pts = self.augment(pts)
        if self.shuffle_points:
            perm = torch.randperm(len(pts))
            pts, lab = pts[perm], lab[perm]
        out: dict[str, Any] = {"points": pts, "labels": lab, "frame_id": name, "skipped": skipped}
        if self.grid is not None:
            v = voxelize(pts, self.grid, self.max_points_per_voxel, self.max_voxels)
            out.update(
                voxel_features=v.features,
                voxel_coords=v.coords,
                voxel_num_points=v.num_points,
                point_voxel_idx=v.point_voxel_idx,
            )
        return out


class SyntheticLidar(_LidarDataset):
    """Procedural street sweeps: sample i is a pure function of (seed, split, i).

    A street scene (:func:`~maskfm.data.lidar_scenes.make_street_scene`) is ray-cast with a
    ``beams``-beam rotating sensor (32: HDL-32E -30.67..+10.67 deg, otherwise -24.9..+2 deg;
    ``azimuth_res_deg`` 0.3 -> ~34k points for 32 beams, ~70k for 64) or with ``sensor``.
    Labels: 0 ground, 1 car, 2 building, 3 pole/tree trunk.
    """

    def __init__(
        self,
        num_samples: int,
        beams: int = 32,
        seed: int = 0,
        split: str = "train",
        *,
        azimuth_res_deg: float = 0.3,
        sensor: LidarSensor | None = None,
        grid: VoxelGrid | str | None = None,
        max_points_per_voxel: int | None = None,
        max_voxels: int | None = None,
        shuffle_points: bool = False,
        augment: GlobalAugment | None = None,
        min_voxels: int = MIN_VOXELS,
    ) -> None:
        super().__init__(
            grid, max_points_per_voxel, max_voxels, False, shuffle_points, augment, min_voxels
        )
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_samples = num_samples
        self.sensor = sensor or LidarSensor(beams=beams, azimuth_res_deg=azimuth_res_deg)
        self.seed, self.split = seed, split
        self._split_code = zlib.crc32(split.encode())

    def __len__(self) -> int:
        return self.num_samples

    def _describe(self) -> str:
        return f"SyntheticLidar(split={self.split!r}, seed={self.seed})"

    def _load(self, idx: int) -> tuple[np.ndarray, np.ndarray, str]:
        rng = np.random.default_rng([self.seed, self._split_code, idx])
        points, labels = simulate_sweep(make_street_scene(rng), self.sensor, rng)
        return points, labels, f"synthetic/{self.split}/{idx:06d}"


class _FileLidar(_LidarDataset):
    files: list[Path]
    root: Path

    def __len__(self) -> int:
        return len(self.files)

    def _describe(self) -> str:
        return f"{type(self).__name__} '{self.root}'"

    def _read(self, path: Path) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def _load(self, idx: int) -> tuple[np.ndarray, None, str]:
        path = self.files[idx]
        if not path.is_file():
            raise FileNotFoundError(
                f"LiDAR file '{path}' (listed for {self._describe()}) does not exist"
            )
        return self._read(path), None, str(path)


class KittiVelodyne(_FileLidar):
    """KITTI velodyne scans ``<root>/training/velodyne/<id>.bin`` (split "test": ``testing/``).

    Ids come from ``<root>/ImageSets/<split>.txt`` when it exists, else every ``.bin`` (sorted).
    Points: x, y, z, reflectance as stored (full 360 deg scan, no camera-FOV crop).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        grid: VoxelGrid | str | None = None,
        max_points_per_voxel: int | None = None,
        max_voxels: int | None = None,
        skip_corrupt: bool = False,
        shuffle_points: bool = False,
        augment: GlobalAugment | None = None,
        min_voxels: int = MIN_VOXELS,
    ) -> None:
        super().__init__(
            grid, max_points_per_voxel, max_voxels, skip_corrupt, shuffle_points, augment,
            min_voxels,
        )
        self.root = _check_root(root, "KITTI")
        self.split = split
        vdir = self.root / ("testing" if split == "test" else "training") / "velodyne"
        if not vdir.is_dir():
            raise FileNotFoundError(f"KITTI velodyne folder '{vdir}' does not exist")
        all_files = sorted(vdir.glob("*.bin"))
        ids = _split_list(self.root, split, "KITTI", len(all_files))
        self.files = all_files if ids is None else [vdir / f"{i}.bin" for i in ids]
        if not self.files:
            raise FileNotFoundError(f"no .bin files in KITTI velodyne folder '{vdir}'")

    def _read(self, path: Path) -> np.ndarray:
        pts = read_bin(path, 4)
        check_plausible(pts, path, ("x", "y", "z", "reflectance"), 1.0)
        _check_finite(pts, str(path))
        return pts


class NuScenesLidar(_FileLidar):
    """nuScenes key-frame sweeps ``<root>/samples/LIDAR_TOP/*.pcd.bin`` (float32 x 5).

    Keeps x, y, z, intensity / 255; drops the 5th column (ring index 0-31). ``split``: optional
    ``<root>/ImageSets/<split>.txt`` of file names; otherwise (or ``split=None``) all files.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        *,
        grid: VoxelGrid | str | None = None,
        max_points_per_voxel: int | None = None,
        max_voxels: int | None = None,
        skip_corrupt: bool = False,
        shuffle_points: bool = False,
        augment: GlobalAugment | None = None,
        min_voxels: int = MIN_VOXELS,
    ) -> None:
        super().__init__(
            grid, max_points_per_voxel, max_voxels, skip_corrupt, shuffle_points, augment,
            min_voxels,
        )
        self.root = _check_root(root, "nuScenes")
        self.split = split
        ldir = self.root / "samples" / "LIDAR_TOP"
        if not ldir.is_dir():
            raise FileNotFoundError(f"nuScenes folder '{ldir}' does not exist")
        all_files = sorted(ldir.glob("*.pcd.bin"))
        names = _split_list(self.root, split, "nuScenes", len(all_files))
        self.files = (
            all_files
            if names is None
            else [ldir / (n if n.endswith(".pcd.bin") else f"{n}.pcd.bin") for n in names]
        )
        if not self.files:
            raise FileNotFoundError(f"no .pcd.bin files in nuScenes folder '{ldir}'")

    def _read(self, path: Path) -> np.ndarray:
        raw = read_bin(path, len(NUSCENES_COLUMNS))
        check_plausible(raw, path, NUSCENES_COLUMNS, 255.0)
        pts = raw[:, :4].copy()
        _check_finite(pts, str(path))
        pts[:, 3] /= 255.0
        return pts


class WaymoNpy(_FileLidar):
    """Waymo frames converted by OpenPCDet: ``<root>/[waymo_processed_data_v0_5_0/]<segment>/
    %04d.npy``, float32 (N, 6) x, y, z, intensity, elongation, NLZ flag.

    Keeps x, y, z, tanh(intensity); drops elongation and the NLZ flag (``drop_nlz_points``: keep
    only points with flag -1 first). ``split``: optional ``<root>/ImageSets/<split>.txt`` of
    segment names; otherwise (or ``split=None``) every segment folder, sorted.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        *,
        drop_nlz_points: bool = False,
        grid: VoxelGrid | str | None = None,
        max_points_per_voxel: int | None = None,
        max_voxels: int | None = None,
        skip_corrupt: bool = False,
        shuffle_points: bool = False,
        augment: GlobalAugment | None = None,
        min_voxels: int = MIN_VOXELS,
    ) -> None:
        super().__init__(
            grid, max_points_per_voxel, max_voxels, skip_corrupt, shuffle_points, augment,
            min_voxels,
        )
        self.root = _check_root(root, "Waymo")
        self.split = split
        self.drop_nlz_points = drop_nlz_points
        data = self.root / "waymo_processed_data_v0_5_0"
        data = data if data.is_dir() else self.root
        segments = sorted(p for p in data.iterdir() if p.is_dir() and p.name != "ImageSets")
        names = _split_list(self.root, split, "Waymo", len(segments))
        if names is not None:
            segments = []
            for name in names:
                seg = data / (name[: -len(".tfrecord")] if name.endswith(".tfrecord") else name)
                if seg.is_dir():
                    segments.append(seg)
                elif skip_corrupt:
                    log.warning("Waymo: skipping listed segment '%s': folder missing", seg)
                else:
                    raise FileNotFoundError(
                        f"Waymo segment folder '{seg}' (listed in split {split!r}) does not exist"
                    )
        self.files = [f for seg in segments for f in sorted(seg.glob("*.npy"))]
        if not self.files:
            raise FileNotFoundError(f"no <segment>/*.npy files under Waymo folder '{data}'")

    def _read(self, path: Path) -> np.ndarray:
        arr = _read_waymo_npy(path)
        if self.drop_nlz_points:
            arr = arr[arr[:, 5] == -1]
        pts = arr[:, :4].astype(np.float32)
        _check_finite(pts, str(path))
        pts[:, 3] = np.tanh(pts[:, 3])
        return pts


# --------------------------------------------------------------------------------------
# Collate and DataModule
# --------------------------------------------------------------------------------------


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
        base = VoxelGrid(tuple(point_cloud_range), tuple(voxel_size))
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


class LidarDataModule(LoaderDataModule):
    """LiDAR loaders: voxelised sweeps collated by :func:`collate_lidar`.

    ``dataset``: "synthetic" (:class:`SyntheticLidar`, ``num_train`` / ``num_val`` sweeps of
    splits "train" / "val", ``beams``, ``azimuth_res_deg``, ``seed``), "kitti", "nuscenes" or
    "waymo" (``root`` required; splits ``train_split`` / ``val_split`` via optional ImageSets
    lists, see the module docstring; ``num_train`` / ``num_val`` / ``seed`` unused).

    Grid: ``grid`` preset name (or None) with optional ``point_cloud_range`` / ``voxel_size`` /
    ``max_points_per_voxel`` overrides (:func:`resolve_grid`). ``max_voxels``: None -> the
    grid's MAX_NUMBER_OF_VOXELS (train limit for the train set, test limit otherwise; none for a
    custom grid), 0 -> unlimited, n -> n for every set. ``min_voxels``: sweeps filling fewer
    voxels are unusable (raise, or are skipped with ``skip_corrupt``; :data:`MIN_VOXELS`).

    ``shuffle_points`` and ``augment`` (:class:`GlobalAugment`; off by default) apply to the
    train set only. ``eval_dataloaders()`` returns unshuffled ``(train, val)`` loaders without
    either. ``batch_size`` is per device; ``batch["batch_size"]`` is a Python int.
    """

    collate_fn = staticmethod(collate_lidar)

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        grid: str | None = "kitti",
        point_cloud_range: Sequence[float] | None = None,
        voxel_size: Sequence[float] | None = None,
        max_points_per_voxel: int | None = None,
        max_voxels: int | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        num_train: int = 256,
        num_val: int = 32,
        beams: int = 32,
        azimuth_res_deg: float = 0.3,
        seed: int = 0,
        skip_corrupt: bool = False,
        train_split: str = "train",
        val_split: str = "val",
        shuffle_points: bool = False,
        augment: bool = False,
        drop_nlz_points: bool = False,
        pin_memory: bool = False,
        min_voxels: int = MIN_VOXELS,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dataset == "synthetic" and num_train < batch_size:
            raise ValueError(
                f"num_train={num_train} is smaller than batch_size={batch_size}; "
                "with drop_last=True the train loader would be empty"
            )
        if dataset != "synthetic":
            _check_root(root, dataset)
        if min_voxels < 0:
            raise ValueError(f"min_voxels must be >= 0, got {min_voxels}")
        if max_voxels is not None and max_voxels < 0:
            raise ValueError(
                f"max_voxels must be None, 0 (unlimited) or positive, got {max_voxels}"
            )
        self.dataset = dataset
        self.root = root
        self.grid = resolve_grid(grid, point_cloud_range, voxel_size, max_points_per_voxel)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.class_names = list(LABEL_NAMES)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._eval_sets: tuple[Dataset, Dataset] | None = None

    def _max_voxels(self, train: bool) -> int | None:
        mv = self.hparams.max_voxels
        if mv is None:
            return self.grid.max_voxels_train if train else self.grid.max_voxels_test
        return None if mv == 0 else int(mv)

    def _make(self, split: str, train: bool) -> Dataset:
        hp = self.hparams
        kw: dict[str, Any] = {
            "grid": self.grid,
            "max_voxels": self._max_voxels(train),
            "shuffle_points": hp.shuffle_points and train,
            "augment": GlobalAugment() if hp.augment and train else None,
            "min_voxels": hp.min_voxels,
        }
        if self.dataset == "synthetic":
            n = hp.num_train if split == hp.train_split else hp.num_val
            return SyntheticLidar(
                n, hp.beams, hp.seed, split, azimuth_res_deg=hp.azimuth_res_deg, **kw
            )
        kw["skip_corrupt"] = hp.skip_corrupt
        if self.dataset == "kitti":
            return KittiVelodyne(self.root, split, **kw)
        if self.dataset == "nuscenes":
            return NuScenesLidar(self.root, split, **kw)
        return WaymoNpy(self.root, split, drop_nlz_points=hp.drop_nlz_points, **kw)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._make(self.hparams.train_split, train=True)
            self.val_set = self._make(self.hparams.val_split, train=False)

    def eval_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """(train, val) loaders: unshuffled, no augmentation or point shuffling, test limits."""
        if self._eval_sets is None:
            self._eval_sets = (
                self._make(self.hparams.train_split, train=False),
                self._make(self.hparams.val_split, train=False),
            )
        return (
            self.loader(self._eval_sets[0], train=False),
            self.loader(self._eval_sets[1], train=False),
        )
