"""Reading a checkpoint file as data: tensors and plain values, never code.

Every place that reads a checkpoint (``train ckpt_path=``, a SLURM requeue, ``evaluate
ckpt_path=``, the original-repository importers, ``model.*.pretrained``) goes through
:func:`read_checkpoint`, so a file that is not a checkpoint at all (text, empty, truncated,
a zip that is not a torch file) or that carries pickled code ends in one line naming the
file and what was expected.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from maskfm.errors import UserInputError


class CheckpointFileError(UserInputError):
    """The file is not a checkpoint this command can read."""


def read_checkpoint(path: str | Path, expected: str = "a torch checkpoint (.ckpt/.pth)") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    Memory-mapped where the file is torch's zip format, so checking a large checkpoint
    before Lightning loads it costs little.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointFileError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFileError(f"{path}: the file is empty; expected {expected}")
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if not any(n.endswith("data.pkl") for n in names):
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise CheckpointFileError(
                f"{path}: a zip archive without torch's data.pkl ({shown}); expected {expected}"
            )
    else:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"PK":
            raise CheckpointFileError(
                f"{path}: a truncated or corrupt zip archive; expected {expected}"
            )
        if head[:1] != b"\x80":  # every pickle protocol >= 2, torch's legacy format included
            raise CheckpointFileError(
                f"{path}: not a torch file (starts with {head!r}); expected {expected}"
            )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL (\S+)", str(e))
            what = (
                f"it names {found.group(1)}"
                if found
                else "it holds objects other than tensors and plain values"
            )
            raise CheckpointFileError(
                f"{path}: refused to unpickle: {what}; a checkpoint holds data, never code"
            ) from e
        raise CheckpointFileError(
            f"{path}: unreadable ({_first_line(e)}); expected {expected}"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointFileError(
            f"{path}: truncated or corrupt ({_first_line(e)}); expected {expected}"
        ) from e


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def checkpoint_method(checkpoint: Any) -> str | None:
    """The method a maskfm checkpoint was trained with, e.g. ``maskfm.methods.mae.MAE``."""
    if not isinstance(checkpoint, dict):
        return None
    stored = checkpoint.get("maskfm_config") or {}
    model = stored.get("model") if isinstance(stored, dict) else None
    target = model.get("_target_") if isinstance(model, dict) else None
    return target if isinstance(target, str) else None


def is_maskfm_checkpoint(checkpoint: Any) -> bool:
    return isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict)
