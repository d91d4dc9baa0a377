"""Training callbacks and plugins: reconstruction pictures, progress display, throughput, safe
checkpoints, BatchNorm synchronised across CPU processes."""

from maskfm.callbacks.checkpoint_io import AtomicCheckpointIO
from maskfm.callbacks.progress import LineProgressBar, auto_progress_bar
from maskfm.callbacks.reconstructions import ReconstructionPictures
from maskfm.callbacks.sync_batchnorm import AllReduceBatchNorm, CPUSyncBatchNorm
from maskfm.callbacks.throughput import Throughput

__all__ = [
    "AllReduceBatchNorm",
    "AtomicCheckpointIO",
    "CPUSyncBatchNorm",
    "LineProgressBar",
    "ReconstructionPictures",
    "Throughput",
    "auto_progress_bar",
]
