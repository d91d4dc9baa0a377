"""KITTI velodyne scans: ``<root>/{training,testing}/velodyne/<id>.bin``, float32 x 4."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from maskfm.data.lidar.common import _check_finite, check_plausible, read_bin
from maskfm.data.lidar.dataset import _FileLidar
from maskfm.data.lidar.registry import LidarSet, register_lidar_dataset


class KittiVelodyne(_FileLidar):
    """KITTI velodyne scans ``<root>/training/velodyne/<id>.bin`` (split "test": ``testing/``).

    Ids come from ``<root>/ImageSets/<split>.txt`` when it exists, else every ``.bin`` (sorted).
    Points: x, y, z, reflectance as stored (full 360 deg scan, no camera-FOV crop). Keyword
    arguments as :class:`~maskfm.data.lidar.dataset._FileLidar`.
    """

    label = "KITTI"

    def __init__(self, root: str | os.PathLike | None, split: str = "train", **kwargs: Any) -> None:
        super().__init__(root, split, **kwargs)

    def _list_files(self, split: str | None) -> list[Path]:
        vdir = self.root / ("testing" if split == "test" else "training") / "velodyne"
        return self._folder_files(
            vdir, "KITTI velodyne folder", ".bin", split, lambda i: f"{i}.bin"
        )

    def _read(self, path: Path) -> np.ndarray:
        pts = read_bin(path, 4)
        check_plausible(pts, path, ("x", "y", "z", "reflectance"), 1.0)
        _check_finite(pts, str(path))
        return pts


@register_lidar_dataset("kitti")
def _kitti(s: LidarSet) -> KittiVelodyne:
    return KittiVelodyne(s.root, s.split, **s.kwargs)
