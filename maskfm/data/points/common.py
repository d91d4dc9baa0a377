"""What the point-cloud formats share: errors, array helpers, checks and the dataset base."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from maskfm.data.base import load_or_skip
from maskfm.errors import UserInputError

_SPLITS = ("train", "test")
_FPS_CHUNK = 64  # clouds per batched FPS call when building caches

# Largest plausible |coordinate|, checked on every stored point when a file or row is read (not
# only on the sampled subset, so a bad file fails on every epoch alike, naming file and row).
# The released ShapeNet-55 .npy and ModelNet40 .txt clouds are normalised to about the unit
# sphere; ScanObjectNN stores object scans in metres, a few metres across. The bounds leave a
# wide margin (other units, re-exports) yet catch outliers that would squash the normalised cloud
# to a point (1e6), overflow float32 sums (1e20) or reach the model as a NaN loss (1e30).
MAX_ABS_COORD_UNIT = 1e3  # ShapeNet-55, ModelNet40
MAX_ABS_COORD_METRES = 1e2  # ScanObjectNN


class CorruptPointCloudError(UserInputError):
    """A point-cloud file (or a row of one) that exists but cannot be used; names the file."""


class UntrustedPickleError(UserInputError):
    """A pickled cache (.dat) was found but ``trust_pickle`` is False."""


def pc_normalize(points: np.ndarray) -> np.ndarray:
    """Centre on the centroid and divide by the largest radius: float32 (..., N, 3) in the unit ball.

    Works on one cloud (N, 3) or a batch (B, N, 3). Raises ValueError for a degenerate cloud
    (all points equal) or non-finite coordinates.
    """
    pts = np.asarray(points, dtype=np.float32)
    pts = pts - pts.mean(axis=-2, keepdims=True)
    radius = np.sqrt((pts * pts).sum(axis=-1).max(axis=-1, keepdims=True))[..., None]
    if not (np.isfinite(radius).all() and (radius > 0).all()):
        raise ValueError(
            "cannot normalise a point cloud whose points all coincide or are not finite"
        )
    return pts / radius


def _normalize_rows(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched pc_normalize on (B, N, 3): (normalised float32, ok (B,) bool: radius > 0)."""
    xyz = xyz - xyz.mean(axis=1, keepdims=True)
    radius = np.sqrt((xyz * xyz).sum(axis=-1).max(axis=1))
    ok = np.isfinite(radius) & (radius > 0)
    return (xyz / np.where(ok, radius, 1)[:, None, None]).astype(np.float32), ok


def farthest_point_subsample(
    points: np.ndarray, num_points: int, chunk: int = _FPS_CHUNK
) -> np.ndarray:
    """FPS-subsample a batch float (B, N, 3) to float32 (B, num_points, 3), in input order.

    Uses :func:`maskfm.tokens.group.farthest_point_sample` (start index 0, the CUDA kernel's
    rules, including never picking points with |p|^2 <= 1e-3) in chunks of ``chunk`` clouds.
    """
    from maskfm.tokens.group import farthest_point_sample

    out = np.empty((len(points), num_points, 3), dtype=np.float32)
    for s in range(0, len(points), chunk):
        t = torch.from_numpy(np.ascontiguousarray(points[s : s + chunk, :, :3], dtype=np.float32))
        idx = farthest_point_sample(t, num_points)
        out[s : s + chunk] = torch.gather(t, 1, idx[..., None].expand(-1, -1, 3)).numpy()
    return out


def scale_and_translate(
    points: torch.Tensor,
    generator: torch.Generator | None = None,
    scale_low: float = 2.0 / 3.0,
    scale_high: float = 3.0 / 2.0,
    translate_range: float = 0.2,
) -> torch.Tensor:
    """``PointcloudScaleAndTranslate``: per cloud, xyz * U(low, high)^3 + U(-r, r)^3.

    ``points`` is (B, N, C) or (N, C) with xyz in the first 3 channels (others are kept).
    Per cloud and axis, the scale is ~U(scale_low, scale_high) and the translation
    ~U(-translate_range, translate_range), applied in that order. Random numbers come from
    ``generator`` (on any device) or torch's global RNG on ``points.device``. Returns a new tensor.
    """
    single = points.dim() == 2
    x = points.unsqueeze(0) if single else points
    if x.dim() != 3 or x.shape[-1] < 3:
        raise ValueError(
            f"points must have shape (B, N, C>=3) or (N, C>=3), got {tuple(points.shape)}"
        )
    device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape[0], 2, 3, generator=generator, device=device).to(x.device, x.dtype)
    scale = scale_low + (scale_high - scale_low) * u[:, :1]
    shift = translate_range * (2 * u[:, 1:] - 1)
    xyz = x[..., :3] * scale + shift
    out = xyz if x.shape[-1] == 3 else torch.cat([xyz, x[..., 3:]], dim=-1)
    return out[0] if single else out


def _check_points(
    arr: Any,
    path: Path | str,
    need: int,
    columns: Sequence[int] | None = None,
    max_abs: float = MAX_ABS_COORD_UNIT,
) -> np.ndarray:
    """Validate one stored cloud and return its xyz as float32 (N, 3), or raise naming ``path``.

    Every point must be finite with all coordinates within ``±max_abs`` (checked on the whole
    cloud, so that the outcome does not depend on which points a sampler draws).
    """
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        kind = type(arr).__name__ if not isinstance(arr, np.ndarray) else f"dtype {arr.dtype}"
        raise CorruptPointCloudError(f"'{path}': expected a numeric (N, 3) array, got {kind}")
    if arr.ndim != 2 or arr.shape[1] < 3 or (columns is not None and arr.shape[1] not in columns):
        want = "3" if columns is None else " or ".join(map(str, columns))
        raise CorruptPointCloudError(
            f"'{path}': expected an array of shape (N, {want}) (xyz first), got shape {arr.shape}"
        )
    if arr.shape[0] < need:
        raise CorruptPointCloudError(
            f"'{path}' has {arr.shape[0]} points, fewer than the {need} required"
        )
    xyz = arr[:, :3].astype(np.float32)
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        raise CorruptPointCloudError(
            f"'{path}' has {int(bad.sum())} points with NaN/inf coordinates "
            f"(first at row {int(np.flatnonzero(bad)[0])})"
        )
    huge = (np.abs(xyz) > max_abs).any(axis=1)
    if huge.any():
        row = int(np.flatnonzero(huge)[0])
        raise CorruptPointCloudError(
            f"'{path}' has {int(huge.sum())} points with a coordinate beyond ±{max_abs:g}, "
            f"implausible for this format (first at row {row}: {xyz[row].tolist()})"
        )
    return xyz


def _read_list(path: Path, what: str) -> list[tuple[str, int]]:
    """Non-blank stripped lines of a list file with their 1-based line numbers."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    lines = path.read_text().splitlines()
    entries = [(s.strip(), i) for i, s in enumerate(lines, 1) if s.strip()]
    if not entries:
        raise CorruptPointCloudError(f"{what} '{path}' is empty")
    return entries


def _check_split(split: str) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    return split


class _PointCloudDataset(Dataset):
    """Shared ``__getitem__``: load sample j, skipping (and counting) unusable ones."""

    skip_corrupt: bool = False
    num_points: int
    classes: list[str]

    def __init__(self) -> None:
        self._bad: set[int] = set()  # per process (each DataLoader worker has its own)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def _describe(self) -> str:  # pragma: no cover - overridden
        return type(self).__name__

    def _load(self, idx: int) -> tuple[np.ndarray, int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def __getitem__(self, idx: int) -> dict[str, Any]:
        _, (points, label), skipped = load_or_skip(
            idx,
            len(self),
            self._load,
            self._bad,
            self.skip_corrupt,
            (CorruptPointCloudError, FileNotFoundError),
            f"point clouds of {self._describe()}",
            CorruptPointCloudError,
        )
        return {"points": torch.from_numpy(points), "label": int(label), "skipped": skipped}


class _ArrayPointCloudDataset(_PointCloudDataset):
    """Clouds held in memory as ``points`` (M, P, 3) and ``labels`` (M,); with ``random_order``
    a sample is a random permutation of its points cut to ``num_points`` (torch RNG)."""

    points: np.ndarray
    labels: np.ndarray
    random_order: bool = False

    def __len__(self) -> int:
        return len(self.points)

    def _load(self, idx: int) -> tuple[np.ndarray, int]:
        pts = self.points[idx]
        if self.random_order:
            pts = pts[torch.randperm(len(pts))[: self.num_points].numpy()]
        return np.ascontiguousarray(pts), int(self.labels[idx])
