"""Run directories that never collide, and finding the run that ``ckpt_path=last`` resumes.

Runs live in ``<base>/<YYYY-mm-dd_HH-MM-SS_ffffff>``, sweeps (``-m``) in
``<base>/multirun_<YYYY-mm-dd_HH-MM-SS_ffffff>/<job number>``. The directory is claimed with an
atomic ``mkdir``, so two runs started in the same microsecond still get two directories.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

_CHOSEN: dict[tuple[str, str], str] = {}


def new_run_dir(base: str | Path, prefix: str = "") -> Path:
    """Create and return a fresh, uniquely named directory under ``base``."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    stamp = prefix + datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    for attempt in range(1000):
        path = base / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a unique run directory under {base}")


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoints/*.ckpt`` of a run (``last.ckpt`` wins a tie).

    Usually ``last.ckpt``; but a run killed between writing a periodic checkpoint and
    refreshing ``last.ckpt`` resumes from the newer periodic one. Half-written files are
    ``*.ckpt.tmp`` (see ``AtomicCheckpointIO``) and never chosen.
    """
    found = list(Path(run_dir).glob("checkpoints/*.ckpt"))
    if not found:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"))


def latest_run_with_checkpoint(base: str | Path) -> Path | None:
    """The run under ``base`` whose newest checkpoint is the most recent."""
    runs = [(ckpt, run) for run in Path(base).glob("*/") if (ckpt := latest_checkpoint(run))]
    if not runs:
        return None
    return max(runs, key=lambda pair: pair[0].stat().st_mtime_ns)[1]


def resolve_run_dir(base: str, ckpt_path: str | None = None) -> str:
    """The directory a run writes to.

    * ``ckpt_path=last``: the latest run under ``base`` with a checkpoint (the run
      continues in place); a new directory if there is none.
    * ``ckpt_path=<run>/checkpoints/<file>.ckpt``: that run's directory.
    * otherwise: a new directory.

    The answer is memoised per process, because Hydra resolves ``hydra.run.dir`` more
    than once.
    """
    key = (str(base), str(ckpt_path))
    if key not in _CHOSEN:
        chosen: Path | None = None
        if ckpt_path == "last":
            chosen = latest_run_with_checkpoint(base)
        elif ckpt_path not in (None, "None", "null", ""):
            path = Path(str(ckpt_path)).expanduser().resolve()
            if path.parent.name == "checkpoints":
                chosen = path.parent.parent
        _CHOSEN[key] = str(chosen if chosen is not None else new_run_dir(base))
    return _CHOSEN[key]


def resolve_sweep_dir(base: str) -> str:
    """A new ``multirun_<timestamp>`` directory under ``base`` for a sweep (memoised per process).

    Registered with ``use_cache=True``: Hydra copies the cached value from the submitting
    process into every job of the sweep (``OmegaConf.copy_cache``), so jobs, and a job that SLURM
    requeues, find the directory the sweep claimed instead of claiming a new one.
    """
    key = (str(base), "multirun")
    if key not in _CHOSEN:
        _CHOSEN[key] = str(new_run_dir(base, prefix="multirun_"))
    return _CHOSEN[key]


class HydraConfigForSweeps(Callback):
    """Make ``${hydra:...}`` resolvable in the submitting process of a sweep (``-m``).

    Hydra sets its ``HydraConfig`` for each job, but not while the sweeper resolves
    ``hydra.sweep.dir`` in the submitting process; ``paths.log_dir`` is
    ``${hydra:runtime.cwd}/runs``, so without this every sweep fails with "HydraConfig was
    not set". Listed in conf/hydra/default.yaml (``hydra.callbacks``).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        HydraConfig.instance().set_config(config)


def register_resolvers() -> None:
    """Register the resolvers the Hydra configs use.

    ``${maskfm_run_dir:base,ckpt_path}`` and ``${maskfm_sweep_dir:base}`` (conf/hydra/default.yaml);
    ``${maskfm_slurm_tasks:devices}``, ``${maskfm_slurm_gpus:accelerator,devices}``,
    ``${maskfm_slurm_cpus:num_workers}`` and ``${maskfm_slurm_time_limit:partition}``
    (conf/launcher/slurm.yaml).
    """
    from maskfm.slurm import cpus_per_task, gpus_per_node, partition_time_limit, tasks_per_node

    resolvers = {
        "maskfm_run_dir": (resolve_run_dir, False),
        "maskfm_sweep_dir": (resolve_sweep_dir, True),
        "maskfm_slurm_tasks": (tasks_per_node, False),
        "maskfm_slurm_gpus": (gpus_per_node, False),
        "maskfm_slurm_cpus": (cpus_per_task, False),
        "maskfm_slurm_time_limit": (partition_time_limit, True),
    }
    for name, (resolver, use_cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=use_cache)


__all__ = [
    "HydraConfigForSweeps",
    "latest_checkpoint",
    "latest_run_with_checkpoint",
    "new_run_dir",
    "register_resolvers",
    "resolve_run_dir",
    "resolve_sweep_dir",
]
