"""nuScenes key-frame sweeps: ``<root>/samples/LIDAR_TOP/*.pcd.bin``, float32 x 5."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskfm.data.lidar.common import NUSCENES_COLUMNS, _check_finite, check_plausible, read_bin
from maskfm.data.lidar.dataset import _FileLidar
from maskfm.data.lidar.registry import LidarSet, register_lidar_dataset


class NuScenesLidar(_FileLidar):
    """nuScenes key-frame sweeps ``<root>/samples/LIDAR_TOP/*.pcd.bin`` (float32 x 5).

    Keeps x, y, z, intensity / 255; drops the 5th column (ring index 0-31). ``split``: optional
    ``<root>/ImageSets/<split>.txt`` of file names; otherwise (or ``split=None``) all files.
    """

    label = "nuScenes"

    def _list_files(self, split: str | None) -> list[Path]:
        return self._folder_files(
            self.root / "samples" / "LIDAR_TOP", "nuScenes folder", ".pcd.bin", split,
            lambda n: n if n.endswith(".pcd.bin") else f"{n}.pcd.bin",
        )  # fmt: skip

    def _read(self, path: Path) -> np.ndarray:
        raw = read_bin(path, len(NUSCENES_COLUMNS))
        check_plausible(raw, path, NUSCENES_COLUMNS, 255.0)
        pts = raw[:, :4].copy()
        _check_finite(pts, str(path))
        pts[:, 3] /= 255.0
        return pts


@register_lidar_dataset("nuscenes")
def _nuscenes(s: LidarSet) -> NuScenesLidar:
    return NuScenesLidar(s.root, s.split, **s.kwargs)
