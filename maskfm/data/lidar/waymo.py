"""Waymo frames as converted by OpenPCDet: ``<root>/[waymo_processed_data_v0_5_0/]<segment>/%04d.npy``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from maskfm.data.lidar.common import WAYMO_COLUMNS, _check_finite, _split_list
from maskfm.data.lidar.dataset import _FileLidar
from maskfm.data.lidar.registry import LidarSet, register_lidar_dataset
from maskfm.data.points import CorruptPointCloudError

log = logging.getLogger(__name__)


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


class WaymoNpy(_FileLidar):
    """Waymo frames converted by OpenPCDet: ``<root>/[waymo_processed_data_v0_5_0/]<segment>/
    %04d.npy``, float32 (N, 6) x, y, z, intensity, elongation, NLZ flag.

    Keeps x, y, z, tanh(intensity); drops elongation and the NLZ flag (``drop_nlz_points``: keep
    only points with flag -1 first). ``split``: optional ``<root>/ImageSets/<split>.txt`` of
    segment names; otherwise (or ``split=None``) every segment folder, sorted. Other keyword
    arguments as :class:`~maskfm.data.lidar.dataset._FileLidar`.
    """

    label = "Waymo"

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str | None = None,
        *,
        drop_nlz_points: bool = False,
        **kwargs: Any,
    ) -> None:
        self.drop_nlz_points = drop_nlz_points
        super().__init__(root, split, **kwargs)

    def _list_files(self, split: str | None) -> list[Path]:
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
                elif self.skip_corrupt:
                    log.warning("Waymo: skipping listed segment '%s': folder missing", seg)
                else:
                    raise FileNotFoundError(
                        f"Waymo segment folder '{seg}' (listed in split {split!r}) does not exist"
                    )
        files = [f for seg in segments for f in sorted(seg.glob("*.npy"))]
        if not files:
            raise FileNotFoundError(f"no <segment>/*.npy files under Waymo folder '{data}'")
        return files

    def _read(self, path: Path) -> np.ndarray:
        arr = _read_waymo_npy(path)
        if self.drop_nlz_points:
            arr = arr[arr[:, 5] == -1]
        pts = arr[:, :4].astype(np.float32)
        _check_finite(pts, str(path))
        pts[:, 3] = np.tanh(pts[:, 3])
        return pts


@register_lidar_dataset("waymo")
def _waymo(s: LidarSet) -> WaymoNpy:
    return WaymoNpy(s.root, s.split, drop_nlz_points=s.hparams.drop_nlz_points, **s.kwargs)
