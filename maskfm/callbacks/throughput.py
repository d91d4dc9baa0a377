"""Samples per second of the training loop."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback

from maskfm.methods.pretrainer import batch_size_of


class Throughput(Callback):
    """Logs ``train/samples_per_sec`` (this process's samples x world size / wall time)."""

    def __init__(self) -> None:
        self._start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is None:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = batch_size_of(batch) * trainer.world_size / elapsed
        pl_module.log("train/samples_per_sec", rate, on_step=True, on_epoch=False, batch_size=1)
