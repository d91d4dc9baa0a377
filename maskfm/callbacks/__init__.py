"""Training callbacks: reconstruction pictures, progress display, throughput, safe checkpoints."""

from maskfm.callbacks.checkpoint_io import AtomicCheckpointIO
from maskfm.callbacks.progress import LineProgressBar, auto_progress_bar
from maskfm.callbacks.reconstructions import ReconstructionPictures
from maskfm.callbacks.throughput import Throughput

__all__ = [
    "AtomicCheckpointIO",
    "LineProgressBar",
    "ReconstructionPictures",
    "Throughput",
    "auto_progress_bar",
]
