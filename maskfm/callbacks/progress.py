"""Progress display: rich bar on a terminal, plain log lines when stdout is a file.

A rich or tqdm bar redraws one line with carriage returns, which turns SLURM logs and CI
output into one unreadable line. When stdout is not a TTY we print one line every
``refresh_rate`` steps instead.
"""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.utilities import rank_zero_only


class LineProgressBar(ProgressBar):
    """Prints ``epoch e/E step s/S | train/loss=... | it/s`` lines, one per ``refresh_rate`` steps."""

    def __init__(self, refresh_rate: int = 10) -> None:
        super().__init__()
        self.refresh_rate = max(1, int(refresh_rate))
        self._enabled = True
        self._t0 = time.perf_counter()
        self._last_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()
        self._last_step = trainer.global_step

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = batch_idx + 1
        total = self.total_train_batches
        if not self._enabled or (done % self.refresh_rate and done != total):
            return
        now = time.perf_counter()
        rate = (trainer.global_step - self._last_step) / max(now - self._t0, 1e-9)
        self._t0, self._last_step = now, trainer.global_step
        metrics = self.get_metrics(trainer, pl_module)
        shown = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in metrics.items()
            if k != "v_num"
        )
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        total_str = total if isinstance(total, int) else "?"
        print(
            f"epoch {trainer.current_epoch + 1}/{max_epochs} step {done}/{total_str} "
            f"(global {trainer.global_step}) | {shown} | {rate:.2f} it/s",
            flush=True,
        )

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        val = {
            k: f"{float(v):.4g}"
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val/")
        }
        if val:
            print(f"validation after epoch {trainer.current_epoch + 1}: {val}", flush=True)


def auto_progress_bar(refresh_rate: int = 10, force: str | None = None) -> ProgressBar:
    """A rich bar when stdout is a terminal, else :class:`LineProgressBar`.

    ``force`` may be ``"rich"`` or ``"lines"`` to choose explicitly.
    """
    use_rich = sys.stdout.isatty() if force is None else force == "rich"
    if force not in (None, "rich", "lines"):
        raise ValueError(f"progress bar must be 'rich', 'lines' or None (auto), got {force!r}")
    return RichProgressBar() if use_rich else LineProgressBar(refresh_rate)
