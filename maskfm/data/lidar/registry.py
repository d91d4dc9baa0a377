"""The LiDAR format registry: ``@register_lidar_dataset(name)`` on a factory.

A format module defines its dataset and registers a factory ``make(LidarSet) -> Dataset`` under
its config name (``data.dataset``); :class:`~maskfm.data.lidar.datamodule.LidarDataModule` finds
it here, so a new format is one module plus its ``conf/data`` yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightning.fabric.utilities.data import AttributeDict
from torch.utils.data import Dataset

from maskfm.data.registry import Registry

__all__ = ["LIDAR_DATASETS", "LidarFormat", "LidarSet", "register_lidar_dataset"]


@dataclass(frozen=True)
class LidarSet:
    """What a factory gets to build one split: ``kwargs`` are the dataset options the
    DataModule sets for every format (grid, max_voxels, shuffle_points, augment, min_voxels and,
    unless generated, skip_corrupt); its other arguments are in ``hparams``."""

    split: str
    root: str | None
    hparams: AttributeDict
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class LidarFormat:
    """A registered format; ``generated``: needs no root, sized by ``num_train`` / ``num_val``."""

    name: str
    make: Callable[[LidarSet], Dataset]
    generated: bool = False


LIDAR_DATASETS: Registry[LidarFormat] = Registry("LiDAR")


def register_lidar_dataset(
    name: str, *, generated: bool = False
) -> Callable[[Callable[[LidarSet], Dataset]], Callable[[LidarSet], Dataset]]:
    """Register the decorated factory as LiDAR format ``name`` (see :class:`LidarFormat`)."""
    return LIDAR_DATASETS.decorator(name, LidarFormat, generated=generated)
