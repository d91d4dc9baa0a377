"""Loggers: a CSV logger that appends on resume, and a W&B logger that resumes its run.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when its directory is not
empty. Our run directory is never empty (config, checkpoints), and a resumed run must keep
the metrics of the run it continues, so this writer appends instead.

:func:`wandb_logger` names, groups and identifies W&B runs so that a sweep's jobs are grouped,
and a resumed or requeued run continues the same W&B run.
"""

from __future__ import annotations

import csv
import os
import re
import secrets
import string
from pathlib import Path
from typing import cast

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from maskfm.errors import UserInputError


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
        return cast(AppendingExperimentWriter, self._experiment)  # the only writer set here


# -- Weights & Biases -----------------------------------------------------------------------
WANDB_ID_FILE = "wandb_id.txt"
WANDB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Overrides that say nothing about the run itself (already in its name, or where it writes).
_NAME_SKIPS = ("experiment", "logger", "ckpt_path", "print_config", "launcher")
_NAME_SKIP_PREFIXES = ("hydra.", "paths.", "logger.", "launcher.", "callbacks.progress.")


def _hydra_job() -> tuple[bool, str | None, list[str]]:
    """(is a multirun job, its sweep directory, its command-line overrides), if Hydra runs."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False, None, []
    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN, hc.sweep.dir, list(hc.overrides.task)


def run_display_name(base: str | None, overrides: list[str]) -> str | None:
    """``base`` (the experiment's run_name) followed by the overrides that change the run,
    e.g. ``point_cmae masking.ratio=0.7``."""

    def changes_the_run(override: str) -> bool:
        key = override.split("=", 1)[0].lstrip("~+")
        return key not in _NAME_SKIPS and not key.startswith(_NAME_SKIP_PREFIXES)

    kept = [o for o in overrides if changes_the_run(o)]
    return " ".join([base, *kept]) if base and kept else base


def sweep_group(sweep_dir: str) -> str:
    """A sweep's W&B group: its directory's last two parts, e.g. ``point_cmae/multirun_<time>``."""
    parts = Path(sweep_dir).parts
    return "/".join(parts[-2:])


def persistent_run_id(save_dir: str | Path) -> str | None:
    """The W&B run id of the run in ``save_dir``, created on first use (rank 0 only).

    The id is kept in ``<save_dir>/wandb_id.txt``. A run resumed with ``ckpt_path=last``, or
    a requeued cluster job, continues in the same directory, finds the id and so continues
    the same W&B run (Lightning passes ``resume="allow"``). Other ranks log nothing to W&B
    and get None.
    """
    path = Path(save_dir) / WANDB_ID_FILE
    if path.is_file():
        run_id = path.read_text(errors="replace").strip()
        if not WANDB_ID.fullmatch(run_id):  # a file is data: only an id, never a path or option
            raise UserInputError(
                f"{path}: not a W&B run id ({run_id[:40]!r}); expected 1-64 letters, digits, "
                "'-' or '_' (delete the file to start a new W&B run)"
            )
        return run_id
    if rank_zero_only.rank != 0:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8)) + "\n"
    )
    os.replace(tmp, path)
    return path.read_text().strip()


def wandb_logger(
    save_dir: str,
    project: str = "maskfm",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    id: str | None = None,
    name_from_overrides: bool = True,
    upload_config: bool = True,
    **kwargs,
) -> WandbLogger:
    """Lightning's ``WandbLogger`` for one training run, however many processes and restarts.

    Args:
        save_dir: the run directory; W&B files go to ``<save_dir>/wandb`` (offline runs:
            ``wandb/offline-run-*``, ready for ``wandb sync``).
        name: the run's display name; with ``name_from_overrides`` the job's command-line
            overrides are appended (``point_cmae masking.ratio=0.7``).
        group: None groups the jobs of a Hydra multirun by their sweep directory.
        id: None reuses the id stored in the run directory (see :func:`persistent_run_id`).
        upload_config: send the resolved ``config.yaml`` of the run directory as the W&B config.
        kwargs: ``entity``, ``notes``, ``offline``, ``log_model`` (True: checkpoints as
            artifacts at the end, ``"all"``: each one as it is written) and any other
            ``WandbLogger`` / ``wandb.init`` argument.
    """
    multirun, sweep_dir, overrides = _hydra_job()
    if name_from_overrides:
        name = run_display_name(name, overrides)
    if group is None and multirun and sweep_dir:
        group = sweep_group(sweep_dir)
    config_file = Path(save_dir) / "config.yaml"
    if upload_config and config_file.is_file():
        from omegaconf import OmegaConf

        kwargs["config"] = OmegaConf.to_container(OmegaConf.load(config_file))
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        name=name,
        group=group,
        tags=list(tags) if tags else None,
        id=id or persistent_run_id(save_dir),
        **kwargs,
    )
