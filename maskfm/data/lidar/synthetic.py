"""The generated LiDAR format "synthetic": procedural street sweeps (:mod:`maskfm.data.lidar_scenes`)."""

from __future__ import annotations

import zlib

import numpy as np

from maskfm.data.lidar.common import MIN_VOXELS, GlobalAugment
from maskfm.data.lidar.dataset import _LidarDataset
from maskfm.data.lidar.registry import LidarSet, register_lidar_dataset
from maskfm.data.lidar_scenes import LidarSensor, make_street_scene, simulate_sweep
from maskfm.tokens.voxelize import VoxelGrid


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


@register_lidar_dataset("synthetic", generated=True)
def _synthetic(s: LidarSet) -> SyntheticLidar:
    hp = s.hparams
    n = hp.num_train if s.split == hp.train_split else hp.num_val
    return SyntheticLidar(
        n, hp.beams, hp.seed, s.split, azimuth_res_deg=hp.azimuth_res_deg, **s.kwargs
    )
