"""Checkpoint writing that a crash cannot corrupt."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to ``<path>.tmp``, fsync, then rename over ``<path>``.

    A process killed mid-write leaves the previous checkpoint intact (``os.replace`` is
    atomic on POSIX), never a truncated ``last.ckpt``.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
