"""What the LiDAR formats share: limits, raw-file readers and checks, split lists, augmentation."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskfm.data.points import CorruptPointCloudError

log = logging.getLogger(__name__)

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
