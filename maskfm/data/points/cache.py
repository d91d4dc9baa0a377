"""Safe (pickle-free) point caches: .npz files of ``points`` (M, P, C), ``labels`` and metadata."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from maskfm.data.points.common import CorruptPointCloudError

CACHE_VERSION = 1


def save_point_cache(
    path: str | os.PathLike, points: np.ndarray, labels: np.ndarray, **meta: Any
) -> Path:
    """Write ``points`` float32 (M, P, C), ``labels`` int64 (M,) and metadata to an .npz.

    Only plain arrays are stored (read back with ``allow_pickle=False``). The file is
    written to a temporary name and renamed, so readers never see a partial cache.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "points": np.ascontiguousarray(points, dtype=np.float32),
        "labels": np.asarray(labels, dtype=np.int64).reshape(-1),
        "format_version": np.array(CACHE_VERSION),
    }
    for key, value in meta.items():
        if value is not None:
            arrays[key] = np.asarray(value)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_point_cache(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and validate an .npz written by :func:`save_point_cache` (or the converter).

    Returns a dict with at least ``points`` float32 (M, P, C>=3) and ``labels`` int64 (M,).
    Raises CorruptPointCloudError naming the file for anything unreadable or mis-shaped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point cache '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise CorruptPointCloudError(
            f"cannot read point cache '{path}': {type(e).__name__}: {e}"
        ) from e
    if "points" not in data or "labels" not in data:
        raise CorruptPointCloudError(
            f"point cache '{path}' lacks 'points' and/or 'labels' (has {sorted(data)})"
        )
    pts, labels = data["points"], data["labels"]
    if pts.ndim != 3 or pts.shape[2] < 3 or pts.dtype.kind != "f":
        raise CorruptPointCloudError(
            f"point cache '{path}': 'points' must be float (M, P, C>=3), got {pts.dtype} {pts.shape}"
        )
    if labels.dtype.kind not in "iu" or labels.reshape(len(labels), -1).shape[1:] not in ((), (1,)):
        raise CorruptPointCloudError(
            f"point cache '{path}': 'labels' must be integer (M,), got {labels.dtype} {labels.shape}"
        )
    labels = labels.reshape(-1).astype(np.int64)
    if len(labels) != len(pts):
        raise CorruptPointCloudError(
            f"point cache '{path}' has {len(pts)} clouds but {len(labels)} labels"
        )
    data["points"], data["labels"] = pts.astype(np.float32, copy=False), labels
    return data


def _meta_str(data: dict[str, np.ndarray], key: str, default: str = "") -> str:
    return str(data[key]) if key in data else default
