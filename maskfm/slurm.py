"""Running under SLURM: requeue on the time-limit signal, resume after a requeue, job resources.

The life of a job that runs out of time (``launcher=slurm`` passes ``--signal=USR1@120 --requeue``):

1. SLURM sends ``SIGUSR1`` to every task 120 s before the limit (``scancel --signal=USR1 JOB``
   does the same by hand). ``RequeueOnSignal`` only records it: a signal can land in the middle
   of an optimiser step, where no checkpoint is consistent.
2. At the end of the current step all ranks agree to stop and Lightning's own SIGTERM path ends
   the loop cleanly (the step's metrics are logged, no epoch end is faked). The callback then
   writes ``checkpoints/last.ckpt``, rank 0 runs ``scontrol requeue``, and the process exits
   with ``SystemExit``: submitit writes no result, so the sweep keeps waiting for the job.
3. SLURM starts the same job again (``SLURM_RESTART_COUNT`` >= 1). submitit reruns the same Hydra
   job in the same directory, and ``maskfm.train.resume_checkpoint`` resumes from the newest
   checkpoint there, so no ``ckpt_path`` is needed and the run ends at the same global step.

A plain ``SIGTERM`` (preemption, ``scancel``) also saves ``last.ckpt`` before the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments.cluster_environment import ClusterEnvironment
from lightning.fabric.plugins.environments.slurm import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


def in_slurm_job() -> bool:
    """True inside a SLURM job step that Lightning treats as one (not an interactive shell)."""
    return SLURMEnvironment.detect()


def slurm_job_id() -> str | None:
    """``<array job>_<task>`` for an array task (what submitit sweeps submit), else the job id."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def restart_count() -> int:
    """How often SLURM has requeued this job (0 for its first run or outside SLURM)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def cluster_plugins(plugins: Sequence = ()) -> list:
    """Trainer plugins for a SLURM job: Lightning's SLURM environment without its auto-requeue.

    Lightning's own handler saves inside the signal handler, in the middle of whatever step is
    running; ``RequeueOnSignal`` saves between steps instead. Nothing when ``plugins`` already
    hold a cluster environment.
    """
    if not in_slurm_job() or any(isinstance(p, ClusterEnvironment) for p in plugins):
        return []
    return [SLURMEnvironment(auto_requeue=False)]


def signal_number(name: str | int) -> signal.Signals:
    """``"USR1"``, ``"SIGUSR1"`` or ``10`` -> ``signal.SIGUSR1``."""
    if isinstance(name, int) or str(name).isdigit():
        return signal.Signals(int(name))
    text = str(name).upper()
    try:
        return signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except KeyError:
        raise ValueError(
            f"slurm.requeue_signal={name!r} is not a signal name (e.g. USR1)"
        ) from None


class RequeueOnSignal(Callback):
    """Save ``<dirpath>/last.ckpt`` and requeue this SLURM job when ``signum`` arrives.

    ``install()`` sets the signal handler (call it early: the default action of ``SIGUSR1`` kills
    the process) and ``uninstall()`` restores the previous one. See the module docstring.
    """

    def __init__(
        self,
        dirpath: str | Path,
        signum: signal.Signals = signal.SIGUSR1,
        requeue_command: tuple[str, ...] = ("scontrol", "requeue"),
    ) -> None:
        self.dirpath = Path(dirpath)
        self.signum = signum
        self.requeue_command = requeue_command
        self.requested = False  # set by the signal handler, on this rank
        self.stopping = False  # all ranks agreed to stop after this step
        self._previous_handler = None

    def install(self) -> RequeueOnSignal:
        self._previous_handler = signal.signal(self.signum, self._on_signal)
        return self

    def uninstall(self) -> None:
        if self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

    def _on_signal(self, signum, frame) -> None:
        self.requested = True  # nothing else: we may be anywhere, even inside logging

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Every rank asks every step, so all of them stop after the same step.
        if trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            self.stopping = True
            log.warning(
                "Got %s: stopping after step %d to save a checkpoint and requeue job %s",
                self.signum.name,
                trainer.global_step,
                slurm_job_id(),
            )
            # Lightning's SIGTERM flag: the loop finishes this step (metrics, validation if due)
            # and raises SIGTERMException, which reaches on_exception below on every rank.
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = self.dirpath / "last.ckpt"
        for callback in trainer.checkpoint_callbacks:
            # ModelCheckpoint(save_last=True) then keeps overwriting this file as its own
            # last.ckpt after the resume, instead of writing last-v1.ckpt beside it.
            if (
                isinstance(callback, ModelCheckpoint)
                and callback.save_last
                and callback.dirpath
                and Path(callback.dirpath).resolve() == path.parent.resolve()
            ):
                callback.last_model_path = str(path)
        trainer.save_checkpoint(path)  # all ranks: rank 0 writes, the others wait
        log.warning("Saved %s at global step %d", path, trainer.global_step)
        if not self.stopping:
            return  # a plain SIGTERM: SLURM requeues a preempted job itself, or the job ends here
        if trainer.is_global_zero:
            self._requeue(path)

    def _requeue(self, checkpoint: Path) -> None:
        job = slurm_job_id()
        command = [*self.requeue_command, str(job)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise SystemExit(
                f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}. "
                f"The job was not requeued; continue it with ckpt_path={checkpoint}"
            )
        log.warning("Requeued SLURM job %s; it will resume from %s", job, checkpoint)


def requeue_callback(
    requeue_signal: str | int | None, checkpoint_dir: Path
) -> RequeueOnSignal | None:
    """An installed ``RequeueOnSignal`` inside a SLURM job with requeueing on, else None."""
    if requeue_signal in (None, "", "null", "None") or not in_slurm_job():
        return None
    return RequeueOnSignal(checkpoint_dir, signal_number(requeue_signal)).install()


# --- resources of launcher=slurm, resolved from the trainer config ---------------------------------


def _device_count(devices) -> int:
    if isinstance(devices, str):
        count = int(devices) if devices.isdigit() else -1  # "auto" cannot size a job
    elif isinstance(devices, int):
        count = devices
    else:  # a list of device ids (a ListConfig when it comes from the config)
        count = len(devices)
    if count < 1:
        raise ValueError(
            f"launcher=slurm starts one task per device and needs trainer.devices as a count "
            f"(1, 2, 8...) or a list of device ids, got {devices!r}"
        )
    return count


def tasks_per_node(devices) -> int:
    """``--ntasks-per-node``: one task per device, so SLURM starts every rank (Lightning spawns none)."""
    return _device_count(devices)


def gpus_per_node(accelerator: str, devices) -> int | None:
    """``--gpus-per-node``: the trainer's device count on GPUs, none for a CPU trainer."""
    if accelerator == "cpu":
        return None
    if accelerator in ("gpu", "cuda"):
        return _device_count(devices)
    raise ValueError(
        f"launcher=slurm needs trainer.accelerator=cpu or gpu to size the job, got {accelerator!r}"
    )


def cpus_per_task(num_workers) -> int:
    """``--cpus-per-task``: the rank's data-loader workers plus the rank itself.

    What the job uses, so a small node is not asked for CPUs it does not have (a fixed 8 is
    refused by sbatch on a 2-CPU node: "More processors requested than permitted").
    """
    return max(0, int(num_workers or 0)) + 1


def parse_slurm_minutes(text: str) -> int | None:
    """SLURM's time format in minutes: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS``; None for ``UNLIMITED`` / ``infinite`` (no limit)."""
    text = text.strip()
    if text.lower() in ("unlimited", "infinite"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
        return int(days) * 1440 + hours * 60 + minutes + (seconds > 0)
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:  # MM:SS
        return parts[0] + (parts[1] > 0)
    hours, minutes, seconds = parts
    return hours * 60 + minutes + (seconds > 0)


# The time limit asked for when the partition sets none (or sinfo is not there to ask).
DEFAULT_TIMEOUT_MIN = 1440


def partition_time_limit(partition: str | None = None) -> int:
    """``--time`` in minutes: the partition's own limit (``sinfo``), so sbatch never refuses it
    ("Requested time limit is invalid"); ``partition`` None = the cluster's default one.

    A partition without a limit, or no ``sinfo`` on this machine, gives :data:`DEFAULT_TIMEOUT_MIN`.
    Set ``hydra.launcher.timeout_min`` to ask for less.
    """
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%P %l"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_TIMEOUT_MIN
    limits = {}
    for line in out.splitlines():
        name, _, limit = line.strip().partition(" ")
        default = name.endswith("*")
        limits[name.rstrip("*")] = limit
        if default:
            limits[None] = limit
    limit = limits.get(partition)
    minutes = parse_slurm_minutes(limit) if limit else None
    return DEFAULT_TIMEOUT_MIN if minutes is None else minutes


# sbatch's refusal -> the hydra.launcher key that decides it
SBATCH_REASONS = {
    "More processors requested than permitted": "cpus_per_task",
    "Requested node configuration is not available": "cpus_per_task",
    "Requested time limit is invalid": "timeout_min",
    "Memory required by task is not available": "mem_gb",
    "invalid partition": "partition",
    "Invalid account": "account",
    "Invalid qos": "qos",
    "Invalid generic resource": "gpus_per_node",
    "Node count specification invalid": "nodes",
}


def sbatch_refusal_message(stderr: str, launcher_cfg) -> str:
    """One line: sbatch's reason and the ``hydra.launcher.*`` key (with its value) to change."""
    reason = next(
        (line.split("error:", 1)[-1].strip() for line in stderr.splitlines() if "error:" in line),
        stderr.strip().splitlines()[-1] if stderr.strip() else "no reason given",
    )
    key = next((k for text, k in SBATCH_REASONS.items() if text.lower() in stderr.lower()), None)
    if key is None:
        return (
            f"sbatch refused the job: {reason!r}; see hydra.launcher.* (conf/launcher/slurm.yaml)"
        )
    return (
        f"sbatch refused the job: {reason!r}; change hydra.launcher.{key} "
        f"(now {launcher_cfg.get(key) if launcher_cfg is not None else '?'})"
    )


def translate_sbatch_refusals() -> bool:
    """Make a refused submission end in one line (exit code 2) that quotes sbatch's reason and
    names the ``hydra.launcher.*`` key to change, instead of a long submitit traceback.

    Hydra only instantiates launchers from its ``hydra_plugins`` namespace, so the wrapper is
    put around hydra-submitit-launcher's own ``launch`` (idempotent; called by ``maskfm.train``
    at import). Returns False without the slurm extra.
    """
    from hydra.core.plugins import Plugins

    Plugins.instance()  # Hydra's plugin scan re-executes plugin modules: patch after it, once
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
        from submitit.core.utils import FailedJobError
    except ImportError:
        return False
    launch = BaseSubmititLauncher.launch
    if getattr(launch, "_maskfm_translates_sbatch", False):
        return True

    def launch_or_explain(self, job_overrides, initial_job_idx):
        try:
            return launch(self, job_overrides, initial_job_idx)
        except FailedJobError as e:
            cause = e.__cause__
            if not (
                isinstance(cause, subprocess.CalledProcessError) and "sbatch" in str(cause.cmd)
            ):
                raise  # a job that failed after it started: submitit's message names it
            print(f"error: {sbatch_refusal_message(str(e), self.params)}", file=sys.stderr)
            raise SystemExit(2) from None

    launch_or_explain._maskfm_translates_sbatch = True
    BaseSubmititLauncher.launch = launch_or_explain
    return True


__all__ = [
    "RequeueOnSignal",
    "cpus_per_task",
    "parse_slurm_minutes",
    "partition_time_limit",
    "cluster_plugins",
    "gpus_per_node",
    "in_slurm_job",
    "requeue_callback",
    "restart_count",
    "signal_number",
    "slurm_job_id",
    "tasks_per_node",
    "translate_sbatch_refusals",
]
