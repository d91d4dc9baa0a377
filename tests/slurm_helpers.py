"""Callbacks that the SLURM tests add to a training job (``+callbacks.NAME._target_=...``).

Jobs import them from this file, so the tests put the repository on the jobs' ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class SlowSteps(Callback):
    """Sleep after each step and write the global step to ``progress_file``.

    Gives a test time to signal a job in the middle of its training without burning CPU, and
    tells it how far the job has got.
    """

    def __init__(self, seconds: float, progress_file: str) -> None:
        self.seconds = seconds
        self.progress_file = Path(progress_file)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.progress_file.write_text(f"{trainer.global_step}\n")
        time.sleep(self.seconds)


class DieAtStep(Callback):
    """SIGKILL this process at global step ``step`` (a hard death: no result, no traceback)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtStep(Callback):
    """Send ``signum`` (a name such as ``USR1``) to this process once, at global step ``step``."""

    def __init__(self, step: int, signum: str = "USR1") -> None:
        self.step = step
        self.signum = signal.Signals["SIG" + signum]
        self.sent = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
