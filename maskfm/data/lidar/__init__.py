"""LiDAR sweeps (procedural, KITTI, nuScenes, Waymo), voxelised per sample, and their DataModule.

One module per format (:mod:`.synthetic`, :mod:`.kitti`, :mod:`.nuscenes`, :mod:`.waymo`), each
registering itself in :mod:`.registry`; readers and checks in :mod:`.common`, the dataset bases
in :mod:`.dataset`, batching and grids in :mod:`.collate`, loaders in :mod:`.datamodule`.

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

from maskfm.data.lidar.collate import collate_lidar, resolve_grid
from maskfm.data.lidar.common import (
    MAX_RANGE_M,
    MIN_VOXELS,
    NUSCENES_COLUMNS,
    WAYMO_COLUMNS,
    GlobalAugment,
    check_plausible,
    read_bin,
)
from maskfm.data.lidar.datamodule import LidarDataModule
from maskfm.data.lidar.registry import LIDAR_DATASETS, LidarSet, register_lidar_dataset
from maskfm.data.lidar_scenes import LABEL_NAMES
from maskfm.data.points import CorruptPointCloudError

# The built-in formats register in import order, the order error messages list them in.
# isort: off
from maskfm.data.lidar.synthetic import SyntheticLidar
from maskfm.data.lidar.kitti import KittiVelodyne
from maskfm.data.lidar.nuscenes import NuScenesLidar
from maskfm.data.lidar.waymo import WaymoNpy
# isort: on

__all__ = [
    "LABEL_NAMES",
    "LIDAR_DATASETS",
    "MAX_RANGE_M",
    "NUSCENES_COLUMNS",
    "WAYMO_COLUMNS",
    "CorruptPointCloudError",
    "GlobalAugment",
    "KittiVelodyne",
    "LidarDataModule",
    "LidarSet",
    "MIN_VOXELS",
    "NuScenesLidar",
    "SyntheticLidar",
    "WaymoNpy",
    "check_plausible",
    "collate_lidar",
    "read_bin",
    "register_lidar_dataset",
    "resolve_grid",
]


__getattr__ = LIDAR_DATASETS.module_getattr(__name__)  # DATASETS: the registered names
