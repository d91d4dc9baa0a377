"""The point-cloud format registry: ``@register_point_dataset(name, classes=...)`` on a factory.

A format module defines its dataset and registers a factory ``make(PointSet) -> Dataset`` under
its config name (``data.dataset``); :class:`~maskfm.data.points.datamodule.PointCloudDataModule`
finds it here, so a new format is one module plus its ``conf/data`` yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lightning.fabric.utilities.data import AttributeDict
from torch.utils.data import Dataset

from maskfm.data.registry import Registry

__all__ = ["POINT_DATASETS", "PointFormat", "PointSet", "register_point_dataset"]


@dataclass(frozen=True)
class PointSet:
    """What a factory gets to build one split: the DataModule's arguments are in ``hparams``
    (``skip_corrupt``, ``sampling``, ``num_train``, ``seed``...); ``root`` and ``variant`` are
    those of the pre-training or (``eval_set``) the evaluation dataset."""

    split: str
    root: str | None
    variant: str | None
    eval_set: bool
    num_points: int
    hparams: AttributeDict


@dataclass(frozen=True)
class PointFormat:
    """A registered format.

    ``classes(root)``: its class names in label order. ``generated``: needs no root, sized by
    ``num_train`` / ``num_val``. ``variants``: accepts ``data.variant``. ``build_once``: built
    in ``prepare_data`` (on local rank 0) before ``setup``, e.g. to write a cache.
    """

    name: str
    make: Callable[[PointSet], Dataset]
    classes: Callable[[str | None], list[str]]
    generated: bool = False
    variants: bool = False
    build_once: bool = False


POINT_DATASETS: Registry[PointFormat] = Registry("point-cloud")


def register_point_dataset(
    name: str,
    *,
    classes: Callable[[str | None], list[str]],
    generated: bool = False,
    variants: bool = False,
    build_once: bool = False,
) -> Callable[[Callable[[PointSet], Dataset]], Callable[[PointSet], Dataset]]:
    """Register the decorated factory as point-cloud format ``name`` (see :class:`PointFormat`)."""
    return POINT_DATASETS.decorator(
        name, PointFormat, classes=classes, generated=generated, variants=variants,
        build_once=build_once,
    )  # fmt: skip
