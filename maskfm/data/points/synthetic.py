"""The generated point-cloud format "synthetic" (:class:`~maskfm.data.synthetic_shapes.SyntheticShapes3D`)."""

from __future__ import annotations

from maskfm.data.points.registry import PointSet, register_point_dataset
from maskfm.data.synthetic_shapes import CLASSES, SyntheticShapes3D


def _classes(root: str | None) -> list[str]:
    return list(CLASSES)


@register_point_dataset("synthetic", classes=_classes, generated=True)
def _synthetic(s: PointSet) -> SyntheticShapes3D:
    n = s.hparams.num_train if s.split == "train" else s.hparams.num_val
    return SyntheticShapes3D(n, s.num_points, s.hparams.seed, s.split)
