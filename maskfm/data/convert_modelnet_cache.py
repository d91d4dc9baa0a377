"""Convert Point-BERT's pickled ModelNet40 caches (.dat) once into the safe .npz format.

Usage::

    python -m maskfm.data.convert_modelnet_cache IN.dat OUT.npz

``IN.dat`` is ``modelnet40_{train,test}_8192pts_fps.dat`` as written by the Point-BERT /
Point-MAE ``ModelNetDataset``: ``pickle.dump([list_of_points, list_of_labels])`` with
``list_of_points[i]`` float32 (8192, 6) (xyz + normals) and ``list_of_labels[i]`` int32 (1,).
``OUT.npz`` holds ``points`` float32 (M, 8192, 6), ``labels`` int64 (M,) and metadata, all plain
arrays read back with ``allow_pickle=False``. Name it ``modelnet40_{split}_8192pts_fps.npz`` next
to the data (or in ``cache_dir``) for :class:`maskfm.data.points.ModelNet40` to find it, or pass
it as ``cache_file=``.

SECURITY: a .dat file is a Python pickle, and unpickling can execute code chosen by whoever
made the file. Only convert files you trust (built by yourself, or downloaded from the
authors' links). As a second line of defence the unpickler here only resolves the numpy
globals needed to rebuild arrays and refuses anything else, but that is not a guarantee:
treat a .dat of unknown origin as untrusted and do not convert it.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

from maskfm.data.points import CorruptPointCloudError, save_point_cache

# The only globals a pickle of plain numpy arrays needs (numpy 1.x and 2.x module names).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are expected"
            )
        return super().find_class(module, name)


def read_pickled_cache(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle a ModelNet40 .dat cache: (points float32 (M, P, C), labels int64 (M,)).

    Only call this on files you trust (see the module docstring). Raises
    CorruptPointCloudError naming the file if it is unreadable or not in the expected layout.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickled cache '{path}' does not exist")
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f).load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
    ) as e:
        raise CorruptPointCloudError(f"cannot unpickle '{path}': {type(e).__name__}: {e}") from e
    if not (isinstance(obj, list | tuple) and len(obj) == 2):
        raise CorruptPointCloudError(
            f"'{path}' is not a [list_of_points, list_of_labels] pickle (got {type(obj).__name__})"
        )
    pts_list, lab_list = obj
    if not isinstance(pts_list, list | tuple) or not isinstance(lab_list, list | tuple):
        raise CorruptPointCloudError(f"'{path}': both entries must be lists")
    if len(pts_list) != len(lab_list) or not pts_list:
        raise CorruptPointCloudError(
            f"'{path}' holds {len(pts_list)} point arrays and {len(lab_list)} labels"
        )
    first = pts_list[0]
    for i, p in enumerate(pts_list):
        if not isinstance(p, np.ndarray) or p.dtype.kind != "f" or p.ndim != 2 or p.shape[1] < 3:
            got = f"{p.dtype} {p.shape}" if isinstance(p, np.ndarray) else type(p).__name__
            raise CorruptPointCloudError(
                f"'{path}' item {i}: expected float (P, 6) points, got {got}"
            )
        if p.shape != first.shape:
            raise CorruptPointCloudError(
                f"'{path}' item {i} has shape {p.shape}, item 0 has {first.shape}"
            )
    labels = np.empty(len(lab_list), dtype=np.int64)
    for i, lab in enumerate(lab_list):
        arr = np.asarray(lab)
        if arr.dtype.kind not in "iu" or arr.size != 1:
            raise CorruptPointCloudError(
                f"'{path}' label {i}: expected one integer, got {arr.dtype} {arr.shape}"
            )
        labels[i] = int(arr.reshape(-1)[0])
    return np.stack(pts_list).astype(np.float32, copy=False), labels


def convert(src: str | Path, dst: str | Path) -> Path:
    """Read the trusted pickle ``src`` and write the safe .npz ``dst``; returns ``dst``."""
    points, labels = read_pickled_cache(src)
    return save_point_cache(
        dst, points, labels, normalized=False, sampling="fps", source=str(Path(src).resolve())
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m maskfm.data.convert_modelnet_cache",
        description=(
            "Convert a Point-BERT ModelNet40 pickle cache (modelnet40_<split>_8192pts_fps.dat) "
            "to a pickle-free .npz. WARNING: unpickling can run code embedded in the file; only "
            "convert files you trust."
        ),
    )
    parser.add_argument("src", type=Path, help="trusted input .dat (pickle)")
    parser.add_argument("dst", type=Path, help="output .npz, e.g. modelnet40_train_8192pts_fps.npz")
    args = parser.parse_args(argv)
    try:
        out = convert(args.src, args.dst)
    except (FileNotFoundError, CorruptPointCloudError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
