"""Import other repositories' checkpoints (with a report of what did and did not load) and
export maskfm encoders to their layouts: timm, Hugging Face ViTMAE, MAE, Point-MAE, OpenPCDet."""

from maskfm.interop.formats import CKPT_FORMATS, WeightFile, open_weights
from maskfm.interop.imports import import_weights
from maskfm.interop.loading import LoadReport, load_state_dict_with_report
from maskfm.interop.point_mae import load_point_mae_checkpoint, point_mae_filter_fn

__all__ = [
    "CKPT_FORMATS",
    "LoadReport",
    "WeightFile",
    "import_weights",
    "load_point_mae_checkpoint",
    "load_state_dict_with_report",
    "open_weights",
    "point_mae_filter_fn",
]
