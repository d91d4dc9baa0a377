"""Point-cloud datasets (synthetic, ShapeNet-55, ModelNet40, ScanObjectNN, a user's folder) and
their DataModule.

One module per format (:mod:`.shapenet`, :mod:`.modelnet`, :mod:`.scanobjectnn`,
:mod:`.synthetic`, :mod:`.folder` with its readers in :mod:`.files`), each registering itself in
:mod:`.registry`; shared checks in :mod:`.common`, safe caches in :mod:`.cache`, loaders in :mod:`.datamodule`. Importing this package registers
the built-in formats (in this order).

Every dataset returns ``{"points": FloatTensor (num_points, 3), "label": int, "skipped": int}``
so that all sources collate to the same batch keys. The on-disk formats are those of the
Point-BERT / Point-MAE code base (see each class). Files that exist but cannot be used (also:
NaN/inf or implausibly large coordinates, checked on every stored point, see
:data:`MAX_ABS_COORD_UNIT`) raise :class:`CorruptPointCloudError` (a ``ValueError``), as does a
list or h5 file with no entries (at construction); list entries whose file is missing raise
``FileNotFoundError``; both messages name the file. With ``skip_corrupt=True`` such samples are
skipped (the next usable sample is returned) and ``"skipped"`` counts how many were passed over.

Augmentation (:func:`scale_and_translate`, the originals' ``PointcloudScaleAndTranslate``) is
applied by :class:`PointCloudDataModule` on the device, after the batch transfer, while
training only.
"""

from __future__ import annotations

from maskfm.data.points.cache import CACHE_VERSION, load_point_cache, save_point_cache
from maskfm.data.points.common import (
    MAX_ABS_COORD_METRES,
    MAX_ABS_COORD_UNIT,
    CorruptPointCloudError,
    UntrustedPickleError,
    farthest_point_subsample,
    pc_normalize,
    scale_and_translate,
)
from maskfm.data.points.datamodule import PointCloudDataModule
from maskfm.data.points.registry import POINT_DATASETS, PointSet, register_point_dataset

# The built-in formats register in import order, the order error messages list them in.
# isort: off
from maskfm.data.points import synthetic as _synthetic  # noqa: F401
from maskfm.data.points.shapenet import ShapeNet55
from maskfm.data.points.modelnet import ModelNet40
from maskfm.data.points.scanobjectnn import (
    SCANOBJECTNN_CLASSES,
    SCANOBJECTNN_VARIANTS,
    ScanObjectNN,
)
from maskfm.data.points.folder import PointFolder

# isort: on
from maskfm.data.synthetic_shapes import CLASSES, SyntheticShapes3D, sample_shape

__all__ = [
    "CACHE_VERSION",
    "CLASSES",
    "MAX_ABS_COORD_METRES",
    "MAX_ABS_COORD_UNIT",
    "POINT_DATASETS",
    "SCANOBJECTNN_CLASSES",
    "SCANOBJECTNN_VARIANTS",
    "CorruptPointCloudError",
    "ModelNet40",
    "PointCloudDataModule",
    "PointFolder",
    "PointSet",
    "ScanObjectNN",
    "ShapeNet55",
    "SyntheticShapes3D",
    "UntrustedPickleError",
    "farthest_point_subsample",
    "load_point_cache",
    "pc_normalize",
    "register_point_dataset",
    "sample_shape",
    "save_point_cache",
    "scale_and_translate",
]


__getattr__ = POINT_DATASETS.module_getattr(__name__)  # DATASETS: the registered names
