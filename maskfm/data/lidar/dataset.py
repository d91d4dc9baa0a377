"""The LiDAR dataset bases: check, skip and voxelise a sweep; list a format's sweep files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from maskfm.data.base import check_dir, load_or_skip
from maskfm.data.lidar.collate import resolve_grid
from maskfm.data.lidar.common import MIN_VOXELS, GlobalAugment, _check_finite, _split_list
from maskfm.data.points import CorruptPointCloudError
from maskfm.tokens.voxelize import VoxelGrid, voxelize


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

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

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
            idx,
            len(self),
            self._load_checked,
            self._bad,
            self.skip_corrupt,
            (CorruptPointCloudError, FileNotFoundError),
            f"sweeps of {self._describe()}",
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


class _FileLidar(_LidarDataset):
    """Sweeps stored one per file under ``root``: subclasses set ``label`` (the format's name in
    messages) and list the files of a split in ``_list_files``, and read one in ``_read``.

    ``split``: the name of an optional ``<root>/ImageSets/<split>.txt`` list; without it (or
    with ``split=None``) every file is used. The other arguments are :class:`_LidarDataset`'s.
    """

    label: str
    files: list[Path]
    root: Path

    def __init__(
        self,
        root: str | os.PathLike | None,
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
            grid,
            max_points_per_voxel,
            max_voxels,
            skip_corrupt,
            shuffle_points,
            augment,
            min_voxels,
        )
        self.root = check_dir(root, f"{self.label} root", one_error=True)
        self.split = split
        self.files = self._list_files(split)

    def _list_files(self, split: str | None) -> list[Path]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _folder_files(
        self, folder: Path, what: str, ext: str, split: str | None, file_name: Callable[[str], str]
    ) -> list[Path]:
        """The ``*<ext>`` files of ``folder`` (``what`` names it), sorted, or with a split list
        ``folder / file_name(entry)`` per entry."""
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} '{folder}' does not exist")
        all_files = sorted(folder.glob(f"*{ext}"))
        names = _split_list(self.root, split, self.label, len(all_files))
        files = all_files if names is None else [folder / file_name(n) for n in names]
        if not files:
            raise FileNotFoundError(f"no {ext} files in {what} '{folder}'")
        return files

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
