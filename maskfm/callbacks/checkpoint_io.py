"""Checkpoint writing that a crash cannot corrupt, and loading that cannot run code."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def nonfinite_tensors(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors in ``state_dict`` that hold a NaN or inf."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to ``<path>.tmp`` (local run directories), fsync, then rename over ``<path>``;
    load with ``weights_only``.

    * A process killed mid-write leaves the previous checkpoint intact (``os.replace`` is
      atomic on POSIX), never a truncated ``last.ckpt``; a leftover ``*.ckpt.tmp`` is never
      picked up by ``ckpt_path=last``.
    * A checkpoint whose weights hold NaN or inf is refused (``FloatingPointError``), so
      the last good ``last.ckpt`` is never overwritten by a diverged model.
    * Checkpoints are loaded with ``torch.load(weights_only=True)`` (tensors and plain
      Python values only, no code execution) unless a caller explicitly passes
      ``weights_only=False`` for a file it trusts.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        bad = nonfinite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise FloatingPointError(
                f"refusing to write {path.name}: non-finite weights in {shown} "
                f"(step {checkpoint.get('global_step')}); the previous checkpoint is kept"
            )
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options, got {storage_options!r}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:  # next to the target: the rename below stays on one filesystem
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)  # make the rename itself durable

    def load_checkpoint(
        self, path, map_location=lambda storage, loc: storage, weights_only: bool | None = None
    ):
        return super().load_checkpoint(
            path,
            map_location=map_location,
            weights_only=True if weights_only is None else weights_only,
        )
