"""Import checkpoints of the original repositories and report what did and did not load."""

from maskfm.interop.loading import LoadReport, load_state_dict_with_report
from maskfm.interop.point_mae import load_point_mae_checkpoint, point_mae_filter_fn

__all__ = [
    "LoadReport",
    "load_point_mae_checkpoint",
    "load_state_dict_with_report",
    "point_mae_filter_fn",
]
