"""R-MAE's sparse backbone -> an OpenPCDet ``--pretrained_model`` file, checked against the
point features OpenPCDet's dataset config feeds it.

OpenPCDet's loader (``Detector3DTemplate.load_params_from_file``) copies tensors whose key
*and shape* match and skips the rest with an INFO line. The first convolution's weight is
``[16, 3, 3, 3, C_in]`` with ``C_in`` the length of ``POINT_FEATURE_ENCODING.used_feature_list``
(MeanVFE keeps every point feature): 4 for KITTI (x, y, z, intensity), 5 for nuScenes
(+ timestamp) and Waymo (+ elongation) in ``tools/cfgs/dataset_configs/*.yaml``. maskfm's
LiDAR data always gives 4 features, so a nuScenes or Waymo backbone would silently lose its
first layer in an unchanged OpenPCDet config: the export refuses unless told which count the
target config uses (``export.openpcdet_in_channels``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from maskfm.errors import UserInputError
from maskfm.nn.sparse_backbone import export_openpcdet_checkpoint

log = logging.getLogger(__name__)

# grid / dataset -> (OpenPCDet used_feature_list, its dataset config)
OPENPCDET_FEATURES = {
    "kitti": (("x", "y", "z", "intensity"), "kitti_dataset.yaml"),
    "nuscenes": (("x", "y", "z", "intensity", "timestamp"), "nuscenes_dataset.yaml"),
    "waymo": (("x", "y", "z", "intensity", "elongation"), "waymo_dataset.yaml"),
}


def openpcdet_dataset(data_cfg: Any) -> str | None:
    """Which OpenPCDet dataset config the data corresponds to (its dataset, else its grid)."""
    dataset = data_cfg.get("dataset") if data_cfg is not None else None
    if dataset in OPENPCDET_FEATURES:
        return dataset
    grid = data_cfg.get("grid") if data_cfg is not None else None
    return grid if grid in OPENPCDET_FEATURES else None


def check_point_features(in_channels: int, data_cfg: Any, expected: int | None) -> str:
    """Raise when the backbone's input width is not what the target OpenPCDet config feeds;
    returns a line for the printout. ``expected`` (``export.openpcdet_in_channels``)
    overrides the dataset config's count."""
    dataset = openpcdet_dataset(data_cfg)
    if expected is None:
        if dataset is None:
            log.warning(
                "!!! export.format=openpcdet: cannot tell which OpenPCDet dataset config this data "
                "matches; the backbone takes %d point features: make POINT_FEATURE_ENCODING."
                "used_feature_list of your OpenPCDet config %d long (export.openpcdet_in_channels=N "
                "states it and silences this warning)",
                in_channels,
                in_channels,
            )
            return f"point features: {in_channels} (not checked against an OpenPCDet config)"
        features, config = OPENPCDET_FEATURES[dataset]
        if len(features) != in_channels:
            raise UserInputError(
                f"export.format=openpcdet: the backbone takes {in_channels} point features "
                f"(model.in_channels={in_channels}) but OpenPCDet's {config} feeds {len(features)} "
                f"({', '.join(features)}): its loader would skip backbone_3d.conv_input.0.weight "
                "silently and train the first layer from scratch. Set used_feature_list in your "
                f"OpenPCDet config to {in_channels} features and pass "
                f"export.openpcdet_in_channels={in_channels}"
            )
        return f"point features: {in_channels} ({', '.join(features)}, OpenPCDet {config})"
    if expected != in_channels:
        raise UserInputError(
            f"export.openpcdet_in_channels={expected} but the backbone takes {in_channels} point "
            f"features (model.in_channels={in_channels}): OpenPCDet would skip "
            "backbone_3d.conv_input.0.weight"
        )
    return f"point features: {in_channels} (export.openpcdet_in_channels)"


def export_openpcdet(
    method: Any, data_cfg: Any, path: str | Path, expected: int | None = None
) -> tuple[Path, list[str]]:
    """Check the input width, write ``{"model_state": backbone_3d.*}``; returns (path,
    printout lines)."""
    backbone = method.encoder
    in_channels = int(backbone.in_channels)
    features = check_point_features(in_channels, data_cfg, expected)
    path = export_openpcdet_checkpoint(backbone, path)
    name = type(backbone).__name__
    lines = [
        features,
        f"MODEL.BACKBONE_3D.NAME: {name} (keys backbone_3d.*, spconv 2.x weight layout)",
    ]
    if data_cfg is not None and data_cfg.get("point_cloud_range") is not None:
        lines.append(
            f"POINT_CLOUD_RANGE: {list(data_cfg.point_cloud_range)}, "
            f"VOXEL_SIZE: {list(data_cfg.voxel_size)} (pretraining grid)"
        )
    lines.append(
        f"python tools/train.py --cfg_file cfgs/<dataset>_models/<detector>.yaml --pretrained_model {path}"
    )
    return path, lines
