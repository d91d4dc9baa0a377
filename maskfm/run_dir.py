"""Run directories that never collide, and finding the run that ``ckpt_path=last`` resumes.

Runs live in ``<base>/<YYYY-mm-dd_HH-MM-SS_ffffff>``. The directory is claimed with an atomic
``mkdir``, so two runs started in the same microsecond still get two directories.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

_CHOSEN: dict[tuple[str, str], str] = {}


def new_run_dir(base: str | Path) -> Path:
    """Create and return a fresh, uniquely named directory under ``base``."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
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


def register_resolvers() -> None:
    """Register ``${maskfm_run_dir:base,ckpt_path}`` for the Hydra configs."""
    if not OmegaConf.has_resolver("maskfm_run_dir"):
        OmegaConf.register_new_resolver("maskfm_run_dir", resolve_run_dir)


__all__ = ["latest_checkpoint", "latest_run_with_checkpoint", "new_run_dir", "register_resolvers", "resolve_run_dir"]
