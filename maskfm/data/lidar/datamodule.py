"""The LiDAR DataModule: voxelised sweeps of any registered format (:mod:`.registry`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from lightning.fabric.utilities.data import AttributeDict
from torch.utils.data import DataLoader, Dataset

from maskfm.data.base import LoaderDataModule, check_dir
from maskfm.data.lidar.collate import collate_lidar, resolve_grid
from maskfm.data.lidar.common import MIN_VOXELS, GlobalAugment
from maskfm.data.lidar.registry import LIDAR_DATASETS, LidarSet
from maskfm.data.lidar_scenes import LABEL_NAMES


class LidarDataModule(LoaderDataModule):
    """LiDAR loaders: voxelised sweeps collated by :func:`collate_lidar`.

    ``dataset``: "synthetic" (:class:`SyntheticLidar`, ``num_train`` / ``num_val`` sweeps of
    splits "train" / "val", ``beams``, ``azimuth_res_deg``, ``seed``), "kitti", "nuscenes" or
    "waymo" (``root`` required; splits ``train_split`` / ``val_split`` via optional ImageSets
    lists, see the module docstring; ``num_train`` / ``num_val`` / ``seed`` unused), or any
    other format registered with :func:`~maskfm.data.lidar.registry.register_lidar_dataset`.

    Grid: ``grid`` preset name (or None) with optional ``point_cloud_range`` / ``voxel_size`` /
    ``max_points_per_voxel`` overrides (:func:`resolve_grid`). ``max_voxels``: None -> the
    grid's MAX_NUMBER_OF_VOXELS (train limit for the train set, test limit otherwise; none for a
    custom grid), 0 -> unlimited, n -> n for every set. ``min_voxels``: sweeps filling fewer
    voxels are unusable (raise, or are skipped with ``skip_corrupt``; :data:`MIN_VOXELS`).

    ``shuffle_points`` and ``augment`` (:class:`GlobalAugment`; off by default) apply to the
    train set only. ``eval_dataloaders()`` returns unshuffled ``(train, val)`` loaders without
    either. ``batch_size`` is per device; ``batch["batch_size"]`` is a Python int.
    """

    collate_fn = staticmethod(collate_lidar)

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        grid: str | None = "kitti",
        point_cloud_range: Sequence[float] | None = None,
        voxel_size: Sequence[float] | None = None,
        max_points_per_voxel: int | None = None,
        max_voxels: int | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        num_train: int = 256,
        num_val: int = 32,
        beams: int = 32,
        azimuth_res_deg: float = 0.3,
        seed: int = 0,
        skip_corrupt: bool = False,
        train_split: str = "train",
        val_split: str = "val",
        shuffle_points: bool = False,
        augment: bool = False,
        drop_nlz_points: bool = False,
        pin_memory: bool = False,
        min_voxels: int = MIN_VOXELS,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        generated = LIDAR_DATASETS[dataset].generated
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if generated and num_train < batch_size:
            raise ValueError(
                f"num_train={num_train} is smaller than batch_size={batch_size}; "
                "with drop_last=True the train loader would be empty"
            )
        if not generated:
            check_dir(root, f"{dataset} root", one_error=True)
        if min_voxels < 0:
            raise ValueError(f"min_voxels must be >= 0, got {min_voxels}")
        if max_voxels is not None and max_voxels < 0:
            raise ValueError(
                f"max_voxels must be None, 0 (unlimited) or positive, got {max_voxels}"
            )
        self.dataset = dataset
        self.root = root
        self.grid = resolve_grid(grid, point_cloud_range, voxel_size, max_points_per_voxel)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.class_names = list(LABEL_NAMES)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._eval_sets: tuple[Dataset, Dataset] | None = None

    @property
    def _hp(self) -> AttributeDict:
        """``hparams`` as ``save_hyperparameters`` stored them (typed attribute access)."""
        return cast(AttributeDict, self.hparams)

    def _max_voxels(self, train: bool) -> int | None:
        mv = self._hp.max_voxels
        if mv is None:
            return self.grid.max_voxels_train if train else self.grid.max_voxels_test
        return None if mv == 0 else int(mv)

    def _make(self, split: str, train: bool) -> Dataset:
        hp = self._hp
        kw: dict[str, Any] = {
            "grid": self.grid,
            "max_voxels": self._max_voxels(train),
            "shuffle_points": hp.shuffle_points and train,
            "augment": GlobalAugment() if hp.augment and train else None,
            "min_voxels": hp.min_voxels,
        }
        fmt = LIDAR_DATASETS[self.dataset]
        if not fmt.generated:
            kw["skip_corrupt"] = hp.skip_corrupt
        return fmt.make(LidarSet(split, self.root, hp, kw))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._make(self._hp.train_split, train=True)
            self.val_set = self._make(self._hp.val_split, train=False)

    def eval_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """(train, val) loaders: unshuffled, no augmentation or point shuffling, test limits."""
        if self._eval_sets is None:
            self._eval_sets = (
                self._make(self._hp.train_split, train=False),
                self._make(self._hp.val_split, train=False),
            )
        return (
            self.loader(self._eval_sets[0], train=False),
            self.loader(self._eval_sets[1], train=False),
        )
