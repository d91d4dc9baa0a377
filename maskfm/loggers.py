"""A CSV logger that appends on resume.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when its directory is not
empty. Our run directory is never empty (config, checkpoints), and a resumed run must keep
the metrics of the run it continues, so this writer appends instead.
"""

from __future__ import annotations

import csv
import os

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class AppendingExperimentWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` and continues it with the same columns."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)


class CSVLogger(_LightningCSVLogger):
    """``lightning``'s CSVLogger writing ``<save_dir>/metrics.csv`` and appending on resume."""

    def __init__(self, save_dir: str, name: str = "", version: str = "", **kwargs) -> None:
        super().__init__(save_dir=save_dir, name=name, version=version, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
