"""ScanObjectNN h5 files (three variants), 15 classes, served raw (object scans in metres)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import cast

import numpy as np

from maskfm.data.base import check_dir
from maskfm.data.points.common import (
    MAX_ABS_COORD_METRES,
    CorruptPointCloudError,
    _ArrayPointCloudDataset,
    _check_split,
    farthest_point_subsample,
)
from maskfm.data.points.registry import PointSet, register_point_dataset

log = logging.getLogger(__name__)

# Label order of the official ScanObjectNN h5 files (Point-BERT data/ScanObjectNN_shape_names.txt).
SCANOBJECTNN_CLASSES = (
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door",
    "shelf", "table", "bed", "pillow", "sink", "sofa", "toilet",
)  # fmt: skip

SCANOBJECTNN_VARIANTS = {
    "obj_bg": ("main_split", "{split}_objectdataset.h5"),
    "obj_only": ("main_split_nobg", "{split}_objectdataset.h5"),
    "hardest": ("main_split", "{split}_objectdataset_augmentedrot_scale75.h5"),  # PB_T50_RS
}


class ScanObjectNN(_ArrayPointCloudDataset):
    """ScanObjectNN h5 files (``root`` = ``.../ScanObjectNN``), 15 classes.

    ``variant``: "obj_bg" = ``main_split/{training,test}_objectdataset.h5``; "obj_only" =
    ``main_split_nobg/{training,test}_objectdataset.h5``; "hardest" (PB_T50_RS) =
    ``main_split/{training,test}_objectdataset_augmentedrot_scale75.h5``. Keys ``data`` float
    (N, 2048, 3) and ``label`` int (N,). Coordinates are served **raw** (no normalisation).

    Train split: a random permutation of the stored points, cut to ``num_points`` (random
    subset + shuffled order). Test split (and ``deterministic=True``): ``test_sampling="fps"``
    (default) takes ``num_points`` by FPS (start index 0, as the originals' test-time
    ``misc.fps``), ``"first"`` the first ``num_points`` stored points; with ``num_points`` equal
    to the stored count the points are returned unchanged.

    A file-level problem (unreadable, wrong keys/shapes, no objects, too few points, no usable
    row) always raises; rows with NaN/inf coordinates, a coordinate beyond
    ``±MAX_ABS_COORD_METRES`` or an out-of-range label raise too, or with ``skip_corrupt=True``
    are skipped and counted.
    """

    classes = list(SCANOBJECTNN_CLASSES)

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str = "train",
        variant: str = "obj_bg",
        num_points: int = 2048,
        skip_corrupt: bool = False,
        test_sampling: str = "fps",
        deterministic: bool = False,
    ) -> None:
        super().__init__()
        if variant not in SCANOBJECTNN_VARIANTS:
            raise ValueError(
                f"variant must be one of {sorted(SCANOBJECTNN_VARIANTS)}, got {variant!r}"
            )
        if test_sampling not in ("fps", "first"):
            raise ValueError(f"test_sampling must be 'fps' or 'first', got {test_sampling!r}")
        self.root = check_dir(root, "ScanObjectNN root")
        self.split = _check_split(split)
        self.variant = variant
        self.num_points = num_points
        self.skip_corrupt = skip_corrupt
        self.random_order = split == "train" and not deterministic
        sub, pattern = SCANOBJECTNN_VARIANTS[variant]
        self.path = (
            self.root / sub / pattern.format(split="training" if split == "train" else "test")
        )
        if not self.path.is_file():
            raise FileNotFoundError(
                f"ScanObjectNN {variant} {split} file '{self.path}' does not exist"
            )
        data, labels = self._read(self.path)
        bad_xyz = ~cast(np.ndarray, np.isfinite(data).all(axis=(1, 2)))  # (M,) bool
        largest = np.abs(np.where(bad_xyz[:, None, None], 0, data)).max(axis=(1, 2))
        bad_label = (labels < 0) | (labels >= len(self.classes))
        problems = {
            **{int(j): f"row {j} has labels {labels[j]} outside [0, {len(self.classes)})"
               for j in np.flatnonzero(bad_label)},
            **{int(j): f"row {j} has a coordinate beyond ±{MAX_ABS_COORD_METRES:g} m "
                       f"({largest[j]:g}), implausible for an object scan"
               for j in np.flatnonzero(largest > MAX_ABS_COORD_METRES)},
            **{int(j): f"row {j} has NaN/inf coordinates" for j in np.flatnonzero(bad_xyz)},
        }  # fmt: skip
        if problems:
            first = min(problems)
            msg = f"'{self.path}': {len(problems)} unusable rows (first: {problems[first]})"
            if len(problems) == len(data):
                raise CorruptPointCloudError(f"{msg}: none of its {len(data)} rows is usable")
            if not skip_corrupt:
                raise CorruptPointCloudError(msg)
            log.warning("ScanObjectNN: skipping %s", msg)
        self._bad = set(problems)
        data[np.array(sorted(problems), dtype=np.int64)] = 1.0  # placeholders, never served
        if not self.random_order and num_points < data.shape[1]:
            if test_sampling == "fps":
                data = farthest_point_subsample(data, num_points)
            else:
                data = np.ascontiguousarray(data[:, :num_points])
        self.points = data
        self.labels = labels.astype(np.int64)

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            import h5py
        except ImportError as e:  # pragma: no cover - h5py is a dependency
            raise ImportError("ScanObjectNN needs h5py: pip install h5py") from e
        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in ("data", "label") if k not in f]
                if missing:
                    raise CorruptPointCloudError(
                        f"'{path}' lacks the dataset(s) {missing} (has {sorted(f.keys())})"
                    )
                data = cast("h5py.Dataset", f["data"])[()]
                labels = cast("h5py.Dataset", f["label"])[()]
        except (OSError, KeyError, TypeError) as e:
            raise CorruptPointCloudError(
                f"cannot read HDF5 file '{path}': {type(e).__name__}: {e}"
            ) from e
        if (
            not isinstance(data, np.ndarray)
            or data.ndim != 3
            or data.shape[2] != 3
            or data.dtype.kind not in "fiu"
        ):
            shape = getattr(data, "shape", None)
            raise CorruptPointCloudError(
                f"'{path}': 'data' must be a float (N, P, 3) array, got {getattr(data, 'dtype', type(data))} {shape}"
            )
        if data.shape[1] < self.num_points:
            raise CorruptPointCloudError(
                f"'{path}' stores {data.shape[1]} points per object, fewer than num_points={self.num_points}"
            )
        labels = np.asarray(labels)
        if (
            labels.dtype.kind not in "iu"
            or labels.ndim not in (1, 2)
            or labels.size != labels.shape[0]
        ):
            raise CorruptPointCloudError(
                f"'{path}': 'label' must be an integer (N,) array, got {labels.dtype} {labels.shape}"
            )
        labels = labels.reshape(-1)
        if len(data) == 0:
            raise CorruptPointCloudError(
                f"'{path}' holds no objects ('data' has shape {data.shape})"
            )
        if len(labels) != len(data):
            raise CorruptPointCloudError(
                f"'{path}' has {len(data)} objects in 'data' but {len(labels)} in 'label'"
            )
        return data.astype(np.float32, copy=False), labels

    def _describe(self) -> str:
        return f"ScanObjectNN '{self.path}'"


def _scanobjectnn_classes(root: str | None) -> list[str]:
    check_dir(root, "ScanObjectNN root")
    return list(SCANOBJECTNN_CLASSES)


@register_point_dataset("scanobjectnn", classes=_scanobjectnn_classes, variants=True)
def _scanobjectnn(s: PointSet) -> ScanObjectNN:
    return ScanObjectNN(
        s.root,
        s.split,
        s.variant or "obj_bg",
        s.num_points,
        s.hparams.skip_corrupt,
        deterministic=s.eval_set,
    )
