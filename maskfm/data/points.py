"""Point-cloud datasets (synthetic, ShapeNet-55, ModelNet40, ScanObjectNN) and their DataModule.

Every dataset returns ``{"points": FloatTensor (num_points, 3), "label": int, "skipped": int}``
so that all sources collate to the same batch keys. The on-disk formats are those of the
Point-BERT / Point-MAE code base (see each class). Files that exist but cannot be used (also:
NaN/inf or implausibly large coordinates, checked on every stored point, see
:data:`MAX_ABS_COORD_UNIT`) raise :class:`CorruptPointCloudError` (a ``ValueError``), as does a
list or h5 file with no entries (at construction); list entries whose file is missing raise
``FileNotFoundError``; both messages name the file. With ``skip_corrupt=True`` such samples are
skipped (the next usable sample is returned) and ``"skipped"`` counts how many were passed over.

Augmentation (:func:`scale_and_translate`, the originals' ``PointcloudScaleAndTranslate``) is
applied by :class:`PointCloudDataModule` on the device, after the batch transfer, while
training only.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from maskfm.data.base import LoaderDataModule, load_or_skip
from maskfm.data.synthetic_shapes import CLASSES, SyntheticShapes3D, sample_shape
from maskfm.errors import UserInputError

log = logging.getLogger(__name__)

__all__ = [
    "CLASSES",
    "SCANOBJECTNN_CLASSES",
    "CorruptPointCloudError",
    "ModelNet40",
    "PointCloudDataModule",
    "ScanObjectNN",
    "ShapeNet55",
    "SyntheticShapes3D",
    "UntrustedPickleError",
    "farthest_point_subsample",
    "load_point_cache",
    "pc_normalize",
    "sample_shape",
    "save_point_cache",
    "scale_and_translate",
]

# Label order of the official ScanObjectNN h5 files (Point-BERT data/ScanObjectNN_shape_names.txt).
SCANOBJECTNN_CLASSES = (
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door",
    "shelf", "table", "bed", "pillow", "sink", "sofa", "toilet",
)  # fmt: skip

SCANOBJECTNN_VARIANTS = {
    "obj_bg": ("main_split", "{split}_objectdataset.h5"),
    "obj_only": ("main_split_nobg", "{split}_objectdataset.h5"),
    "hardest": ("main_split", "{split}_objectdataset_augmentedrot_scale75.h5"),  # PB_T50_RS
}

DATASETS = ("synthetic", "shapenet55", "modelnet40", "scanobjectnn")
CACHE_VERSION = 1
_SPLITS = ("train", "test")
_FPS_CHUNK = 64  # clouds per batched FPS call when building caches

# Largest plausible |coordinate|, checked on every stored point when a file or row is read (not
# only on the sampled subset, so a bad file fails on every epoch alike, naming file and row).
# The released ShapeNet-55 .npy and ModelNet40 .txt clouds are normalised to about the unit
# sphere; ScanObjectNN stores object scans in metres, a few metres across. The bounds leave a
# wide margin (other units, re-exports) yet catch outliers that would squash the normalised cloud
# to a point (1e6), overflow float32 sums (1e20) or reach the model as a NaN loss (1e30).
MAX_ABS_COORD_UNIT = 1e3  # ShapeNet-55, ModelNet40
MAX_ABS_COORD_METRES = 1e2  # ScanObjectNN


class CorruptPointCloudError(UserInputError):
    """A point-cloud file (or a row of one) that exists but cannot be used; names the file."""


class UntrustedPickleError(UserInputError):
    """A pickled cache (.dat) was found but ``trust_pickle`` is False."""


# --------------------------------------------------------------------------------------
# Array helpers
# --------------------------------------------------------------------------------------


def pc_normalize(points: np.ndarray) -> np.ndarray:
    """Centre on the centroid and divide by the largest radius: float32 (..., N, 3) in the unit ball.

    Works on one cloud (N, 3) or a batch (B, N, 3). Raises ValueError for a degenerate cloud
    (all points equal) or non-finite coordinates.
    """
    pts = np.asarray(points, dtype=np.float32)
    pts = pts - pts.mean(axis=-2, keepdims=True)
    radius = np.sqrt((pts * pts).sum(axis=-1).max(axis=-1, keepdims=True))[..., None]
    if not (np.isfinite(radius).all() and (radius > 0).all()):
        raise ValueError(
            "cannot normalise a point cloud whose points all coincide or are not finite"
        )
    return pts / radius


def _normalize_rows(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched pc_normalize on (B, N, 3): (normalised float32, ok (B,) bool: radius > 0)."""
    xyz = xyz - xyz.mean(axis=1, keepdims=True)
    radius = np.sqrt((xyz * xyz).sum(axis=-1).max(axis=1))
    ok = np.isfinite(radius) & (radius > 0)
    return (xyz / np.where(ok, radius, 1)[:, None, None]).astype(np.float32), ok


def farthest_point_subsample(
    points: np.ndarray, num_points: int, chunk: int = _FPS_CHUNK
) -> np.ndarray:
    """FPS-subsample a batch float (B, N, 3) to float32 (B, num_points, 3), in input order.

    Uses :func:`maskfm.tokens.group.farthest_point_sample` (start index 0, the CUDA kernel's
    rules, including never picking points with |p|^2 <= 1e-3) in chunks of ``chunk`` clouds.
    """
    from maskfm.tokens.group import farthest_point_sample

    out = np.empty((len(points), num_points, 3), dtype=np.float32)
    for s in range(0, len(points), chunk):
        t = torch.from_numpy(np.ascontiguousarray(points[s : s + chunk, :, :3], dtype=np.float32))
        idx = farthest_point_sample(t, num_points)
        out[s : s + chunk] = torch.gather(t, 1, idx[..., None].expand(-1, -1, 3)).numpy()
    return out


def scale_and_translate(
    points: torch.Tensor,
    generator: torch.Generator | None = None,
    scale_low: float = 2.0 / 3.0,
    scale_high: float = 3.0 / 2.0,
    translate_range: float = 0.2,
) -> torch.Tensor:
    """``PointcloudScaleAndTranslate``: per cloud, xyz * U(low, high)^3 + U(-r, r)^3.

    ``points`` is (B, N, C) or (N, C) with xyz in the first 3 channels (others are kept).
    Per cloud and axis, the scale is ~U(scale_low, scale_high) and the translation
    ~U(-translate_range, translate_range), applied in that order. Random numbers come from
    ``generator`` (on any device) or torch's global RNG on ``points.device``. Returns a new tensor.
    """
    single = points.dim() == 2
    x = points.unsqueeze(0) if single else points
    if x.dim() != 3 or x.shape[-1] < 3:
        raise ValueError(
            f"points must have shape (B, N, C>=3) or (N, C>=3), got {tuple(points.shape)}"
        )
    device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape[0], 2, 3, generator=generator, device=device).to(x.device, x.dtype)
    scale = scale_low + (scale_high - scale_low) * u[:, :1]
    shift = translate_range * (2 * u[:, 1:] - 1)
    xyz = x[..., :3] * scale + shift
    out = xyz if x.shape[-1] == 3 else torch.cat([xyz, x[..., 3:]], dim=-1)
    return out[0] if single else out


def _check_points(
    arr: Any,
    path: Path | str,
    need: int,
    columns: Sequence[int] | None = None,
    max_abs: float = MAX_ABS_COORD_UNIT,
) -> np.ndarray:
    """Validate one stored cloud and return its xyz as float32 (N, 3), or raise naming ``path``.

    Every point must be finite with all coordinates within ``±max_abs`` (checked on the whole
    cloud, so that the outcome does not depend on which points a sampler draws).
    """
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        kind = type(arr).__name__ if not isinstance(arr, np.ndarray) else f"dtype {arr.dtype}"
        raise CorruptPointCloudError(f"'{path}': expected a numeric (N, 3) array, got {kind}")
    if arr.ndim != 2 or arr.shape[1] < 3 or (columns is not None and arr.shape[1] not in columns):
        want = "3" if columns is None else " or ".join(map(str, columns))
        raise CorruptPointCloudError(
            f"'{path}': expected an array of shape (N, {want}) (xyz first), got shape {arr.shape}"
        )
    if arr.shape[0] < need:
        raise CorruptPointCloudError(
            f"'{path}' has {arr.shape[0]} points, fewer than the {need} required"
        )
    xyz = arr[:, :3].astype(np.float32)
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        raise CorruptPointCloudError(
            f"'{path}' has {int(bad.sum())} points with NaN/inf coordinates "
            f"(first at row {int(np.flatnonzero(bad)[0])})"
        )
    huge = (np.abs(xyz) > max_abs).any(axis=1)
    if huge.any():
        row = int(np.flatnonzero(huge)[0])
        raise CorruptPointCloudError(
            f"'{path}' has {int(huge.sum())} points with a coordinate beyond ±{max_abs:g}, "
            f"implausible for this format (first at row {row}: {xyz[row].tolist()})"
        )
    return xyz


def _check_dir(path: str | os.PathLike | None, what: str) -> Path:
    if path is None:
        raise ValueError(f"{what} is required (got None)")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} '{p}' does not exist")
    if not p.is_dir():
        raise NotADirectoryError(f"{what} '{p}' is not a directory")
    return p


def _read_list(path: Path, what: str) -> list[tuple[str, int]]:
    """Non-blank stripped lines of a list file with their 1-based line numbers."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    lines = path.read_text().splitlines()
    entries = [(s.strip(), i) for i, s in enumerate(lines, 1) if s.strip()]
    if not entries:
        raise CorruptPointCloudError(f"{what} '{path}' is empty")
    return entries


def _check_split(split: str) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    return split


# --------------------------------------------------------------------------------------
# Safe (pickle-free) point caches
# --------------------------------------------------------------------------------------


def save_point_cache(
    path: str | os.PathLike, points: np.ndarray, labels: np.ndarray, **meta: Any
) -> Path:
    """Write ``points`` float32 (M, P, C), ``labels`` int64 (M,) and metadata to an .npz.

    Only plain arrays are stored (read back with ``allow_pickle=False``). The file is
    written to a temporary name and renamed, so readers never see a partial cache.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "points": np.ascontiguousarray(points, dtype=np.float32),
        "labels": np.asarray(labels, dtype=np.int64).reshape(-1),
        "format_version": np.array(CACHE_VERSION),
    }
    for key, value in meta.items():
        if value is not None:
            arrays[key] = np.asarray(value)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_point_cache(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and validate an .npz written by :func:`save_point_cache` (or the converter).

    Returns a dict with at least ``points`` float32 (M, P, C>=3) and ``labels`` int64 (M,).
    Raises CorruptPointCloudError naming the file for anything unreadable or mis-shaped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point cache '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise CorruptPointCloudError(
            f"cannot read point cache '{path}': {type(e).__name__}: {e}"
        ) from e
    if "points" not in data or "labels" not in data:
        raise CorruptPointCloudError(
            f"point cache '{path}' lacks 'points' and/or 'labels' (has {sorted(data)})"
        )
    pts, labels = data["points"], data["labels"]
    if pts.ndim != 3 or pts.shape[2] < 3 or pts.dtype.kind != "f":
        raise CorruptPointCloudError(
            f"point cache '{path}': 'points' must be float (M, P, C>=3), got {pts.dtype} {pts.shape}"
        )
    if labels.dtype.kind not in "iu" or labels.reshape(len(labels), -1).shape[1:] not in ((), (1,)):
        raise CorruptPointCloudError(
            f"point cache '{path}': 'labels' must be integer (M,), got {labels.dtype} {labels.shape}"
        )
    labels = labels.reshape(-1).astype(np.int64)
    if len(labels) != len(pts):
        raise CorruptPointCloudError(
            f"point cache '{path}' has {len(pts)} clouds but {len(labels)} labels"
        )
    data["points"], data["labels"] = pts.astype(np.float32, copy=False), labels
    return data


def _meta_str(data: dict[str, np.ndarray], key: str, default: str = "") -> str:
    return str(data[key]) if key in data else default


# --------------------------------------------------------------------------------------
# Dataset base: corrupt-sample skipping
# --------------------------------------------------------------------------------------


class _PointCloudDataset(Dataset):
    """Shared ``__getitem__``: load sample j, skipping (and counting) unusable ones."""

    skip_corrupt: bool = False
    num_points: int
    classes: list[str]

    def __init__(self) -> None:
        self._bad: set[int] = set()  # per process (each DataLoader worker has its own)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _describe(self) -> str:  # pragma: no cover - overridden
        return type(self).__name__

    def _load(self, idx: int) -> tuple[np.ndarray, int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def __getitem__(self, idx: int) -> dict[str, Any]:
        _, (points, label), skipped = load_or_skip(
            idx, len(self), self._load, self._bad, self.skip_corrupt,
            (CorruptPointCloudError, FileNotFoundError), f"point clouds of {self._describe()}",
            CorruptPointCloudError,
        )
        return {"points": torch.from_numpy(points), "label": int(label), "skipped": skipped}


# --------------------------------------------------------------------------------------
# ShapeNet-55
# --------------------------------------------------------------------------------------

_SHAPENET_ENTRY = re.compile(r"^([^-/\\]+)-([^/\\]+)\.npy$")


def _shapenet_list(root: Path, split: str) -> Path | None:
    for cand in (root / "ShapeNet-55" / f"{split}.txt", root / f"{split}.txt"):
        if cand.is_file():
            return cand
    return None


class ShapeNet55(_PointCloudDataset):
    """ShapeNet-55 as released with Point-BERT (``root`` = ``.../ShapeNet55-34``).

    Files: ``root/shapenet_pc/<synset>-<model>.npy`` (float (N, 3), N >= 8192 normally; extra
    columns after xyz are ignored) and list files ``root/ShapeNet-55/{train,test}.txt`` (or
    ``root/{train,test}.txt``), one file name per line. ``whole=True`` with split "train"
    serves train + test (Point-BERT's MPM pre-training). Label = index of the synset among the
    sorted synsets of the train and test lists (``classes``).

    Sampling as the original: a random subset of ``num_points`` of the stored points (torch
    RNG; seeded by the index with ``deterministic=True``), then ``pc_norm`` (centroid to the
    origin, largest radius 1), for both splits. The whole stored cloud is checked first: a point
    beyond ``±MAX_ABS_COORD_UNIT`` makes the file unusable whether or not it is sampled.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        num_points: int = 1024,
        skip_corrupt: bool = False,
        whole: bool = False,
        deterministic: bool = False,
    ) -> None:
        super().__init__()
        self.root = _check_dir(root, "ShapeNet-55 root")
        self.split = _check_split(split)
        self.pc_dir = _check_dir(self.root / "shapenet_pc", "ShapeNet-55 point-cloud folder")
        self.num_points = num_points
        self.skip_corrupt = skip_corrupt
        self.deterministic = deterministic
        lists = self._lists(self.root)
        if lists[split] is None:
            raise FileNotFoundError(
                f"ShapeNet-55 list file for split {split!r} not found: looked for "
                f"'{self.root / 'ShapeNet-55' / f'{split}.txt'}' and '{self.root / f'{split}.txt'}'"
            )
        parsed = {s: self._parse(p) for s, p in lists.items() if p is not None}
        self.classes = sorted({syn for entries in parsed.values() for syn, *_ in entries})
        index = {syn: i for i, syn in enumerate(self.classes)}
        use = [split] + (["test"] if whole and split == "train" and "test" in parsed else [])
        self.samples = [
            (self.pc_dir / name, index[syn], lst, line)
            for s in use
            for syn, name, lst, line in parsed[s]
        ]

    @staticmethod
    def _lists(root: Path) -> dict[str, Path | None]:
        lists = {s: _shapenet_list(root, s) for s in _SPLITS}
        for s, p in lists.items():
            if p is None:
                log.warning(
                    "ShapeNet-55: no %s list under '%s'; labels use the other list only", s, root
                )
        return lists

    @staticmethod
    def _parse(path: Path) -> list[tuple[str, str, Path, int]]:
        out = []
        for name, line in _read_list(path, "ShapeNet-55 list file"):
            m = _SHAPENET_ENTRY.match(name)
            if m is None:
                raise CorruptPointCloudError(
                    f"'{path}' line {line}: malformed entry {name!r}, expected '<synset>-<model>.npy'"
                )
            out.append((m.group(1), name, path, line))
        return out

    @classmethod
    def read_classes(cls, root: str | os.PathLike) -> list[str]:
        """Sorted synset ids of the train + test lists (the label order)."""
        lists = cls._lists(_check_dir(root, "ShapeNet-55 root"))
        if all(p is None for p in lists.values()):
            raise FileNotFoundError(
                f"no ShapeNet-55 list files (train.txt / test.txt) under '{root}'"
            )
        return sorted({e[0] for p in lists.values() if p is not None for e in cls._parse(p)})

    def __len__(self) -> int:
        return len(self.samples)

    def _describe(self) -> str:
        return f"ShapeNet-55 {self.split} under '{self.root}'"

    def _load(self, idx: int) -> tuple[np.ndarray, int]:
        path, label, lst, line = self.samples[idx]
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"point cloud '{path}' (listed in '{lst}' line {line}) does not exist"
            ) from None
        except (OSError, ValueError, EOFError) as e:
            raise CorruptPointCloudError(
                f"cannot read point cloud '{path}': {type(e).__name__}: {e}"
            ) from e
        xyz = _check_points(arr, path, self.num_points)
        gen = torch.Generator().manual_seed(idx) if self.deterministic else None
        choice = torch.randperm(len(xyz), generator=gen)[: self.num_points].numpy()
        try:
            return pc_normalize(xyz[choice]), label
        except ValueError as e:
            raise CorruptPointCloudError(f"'{path}': {e}") from e


# --------------------------------------------------------------------------------------
# ModelNet40
# --------------------------------------------------------------------------------------


def _read_modelnet_txt(path: Path, need: int, lst: Path, line: int) -> np.ndarray:
    """xyz float32 (N, 3) of one ``x,y,z,nx,ny,nz`` text file, or raise naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            arr = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"point cloud '{path}' (listed in '{lst}' line {line}) does not exist"
        ) from None
    except (OSError, ValueError) as e:
        raise CorruptPointCloudError(
            f"cannot parse point cloud '{path}': {type(e).__name__}: {e}"
        ) from e
    return _check_points(arr, path, need, columns=(3, 6))


class ModelNet40(_PointCloudDataset):
    """ModelNet40 ``modelnet40_normal_resampled`` (``root``), served from a safe .npz cache.

    ``root`` holds ``modelnet40_shape_names.txt`` (class index = line), ``modelnet40_{split}.txt``
    (ids like ``airplane_0001``; class = id without the trailing ``_XXXX``) and raw
    ``<class>/<id>.txt`` files (comma-separated ``x,y,z,nx,ny,nz``, 10000 rows).

    Per shape, ``sampling="fps"`` keeps xyz, applies ``pc_normalize`` and takes ``num_points``
    by farthest point sampling (deterministic, start index 0); ``sampling="first"`` takes the
    first ``num_points`` rows and then normalises them (Point-BERT's non-uniform option). As
    FPS over 10000 points is slow, the result is cached once in
    ``modelnet40_{split}_{num_points}pts_{sampling}.npz`` (``cache_dir`` if given, else
    ``root``; kept in memory with a warning if neither is writable) and reused. The train split
    shuffles the point order of each returned cloud (not with ``deterministic=True``).

    Cache sources, first match wins: the derived cache itself (same ids, labels and source);
    ``cache_file`` (an .npz as written by ``python -m maskfm.data.convert_modelnet_cache``);
    ``modelnet40_{split}_8192pts_fps.npz`` in ``cache_dir`` / ``root``; the original pickled
    ``modelnet40_{split}_8192pts_fps.dat`` only with ``trust_pickle=True`` (unpickling runs
    arbitrary code from the file); the raw text files. Clouds from an .npz/.dat source are
    normalised and subsampled like the raw ones. If the .dat is the only source and
    ``trust_pickle`` is False, :class:`UntrustedPickleError` explains how to convert it.

    Unusable shapes (also: a coordinate beyond ``±MAX_ABS_COORD_UNIT``) raise when the cache is
    built; with ``skip_corrupt=True`` they are recorded in the cache and skipped (counted in
    ``"skipped"``). A cache that records skipped shapes is refused with ``skip_corrupt=False``,
    and one where no shape is usable always.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        num_points: int = 1024,
        sampling: str = "fps",
        skip_corrupt: bool = False,
        trust_pickle: bool = False,
        cache_dir: str | os.PathLike | None = None,
        cache_file: str | os.PathLike | None = None,
        deterministic: bool = False,
    ) -> None:
        super().__init__()
        if sampling not in ("fps", "first"):
            raise ValueError(f"sampling must be 'fps' or 'first', got {sampling!r}")
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.root = _check_dir(root, "ModelNet40 root")
        self.split = _check_split(split)
        self.num_points = num_points
        self.sampling = sampling
        self.skip_corrupt = skip_corrupt
        self.trust_pickle = trust_pickle
        self.deterministic = deterministic
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self.cache_file = None if cache_file is None else Path(cache_file).expanduser()
        self.classes = self.read_classes(self.root)
        self.list_file = self.root / f"modelnet40_{split}.txt"
        index = {c: i for i, c in enumerate(self.classes)}
        self.ids: list[str] = []
        self.entries: list[tuple[str, int, int]] = []  # (id, label, line)
        for sid, line in _read_list(self.list_file, "ModelNet40 list file"):
            cls = sid.rsplit("_", 1)[0]
            if cls not in index:
                raise CorruptPointCloudError(
                    f"'{self.list_file}' line {line}: shape {sid!r} has class {cls!r}, which is "
                    f"not in '{self.root / 'modelnet40_shape_names.txt'}'"
                )
            self.ids.append(sid)
            self.entries.append((sid, index[cls], line))
        self.labels = np.array([e[1] for e in self.entries], dtype=np.int64)
        self.points, problems, self.cache_path = self._resolve()
        bad = [i for i, p in enumerate(problems) if p]
        if bad and len(bad) == len(problems):  # nothing left to serve, even when skipping
            raise CorruptPointCloudError(
                f"none of the {len(bad)} ModelNet40 {split} shapes listed in '{self.list_file}' "
                f"is usable (first: {problems[bad[0]]})"
            )
        if bad and not skip_corrupt:
            raise CorruptPointCloudError(
                f"{len(bad)} ModelNet40 {split} shapes are unusable (first: {problems[bad[0]]}); "
                f"they were recorded in '{self.cache_path}' by an earlier run with "
                "skip_corrupt=True: pass skip_corrupt=True or delete that cache to rebuild it"
            )
        self._bad = set(bad)
        self.problems = problems

    @staticmethod
    def read_classes(root: str | os.PathLike) -> list[str]:
        """Class names, in label order, from ``modelnet40_shape_names.txt``."""
        path = _check_dir(root, "ModelNet40 root") / "modelnet40_shape_names.txt"
        return [name for name, _ in _read_list(path, "ModelNet40 shape-names file")]

    def __len__(self) -> int:
        return len(self.entries)

    def _describe(self) -> str:
        return f"ModelNet40 {self.split} under '{self.root}'"

    def _load(self, idx: int) -> tuple[np.ndarray, int]:
        pts = self.points[idx]
        if self.split == "train" and not self.deterministic:
            pts = pts[torch.randperm(len(pts)).numpy()]
        return np.ascontiguousarray(pts), int(self.labels[idx])

    # ---- cache resolution -----------------------------------------------------------

    def _dirs(self) -> list[Path]:
        dirs = [self.cache_dir] if self.cache_dir is not None else []
        return [*dirs, self.root] if self.root not in dirs else dirs

    def _resolve(self) -> tuple[np.ndarray, list[str], Path]:
        name = f"modelnet40_{self.split}_{self.num_points}pts_{self.sampling}.npz"
        derived = [d / name for d in self._dirs()]
        target = derived[0]

        # The source a cache would be built from: explicit cache_file, else a converted
        # modelnet40_{split}_8192pts_fps.npz, else the pickled .dat if trusted (or if it is
        # all there is), else the raw text files.
        converted = f"modelnet40_{self.split}_8192pts_fps.npz"
        dat = self.root / f"modelnet40_{self.split}_8192pts_fps.dat"
        src: Path | None = self.cache_file
        if src is None:
            src = next((c for c in (d / converted for d in self._dirs()) if c.is_file()), None)
        if src is None and dat.is_file():
            if self.trust_pickle or not self._raw_available():
                src = dat
            else:
                log.info("ModelNet40: ignoring the untrusted pickle '%s'; using raw files", dat)
        source = "raw" if src is None else str(src.resolve())

        for cand in derived:  # an existing derived cache built from that source
            if cand.is_file():
                got = self._try_derived(cand, source)
                if got is not None:
                    return (*got, cand)

        if src is None:
            return self._build_raw(target)
        if src != dat:
            return self._derive(load_point_cache(src), src, source, target)
        if not self.trust_pickle:
            raise UntrustedPickleError(
                f"'{dat}' is a pickle file and no raw ModelNet40 text files were found under "
                f"'{self.root}'. Unpickling can execute arbitrary code from the file, so it is "
                "only read with trust_pickle=True. If you trust its origin, either pass "
                "trust_pickle=True or convert it once to the safe .npz format:\n"
                f"    python -m maskfm.data.convert_modelnet_cache '{dat}' "
                f"'{dat.with_suffix('.npz')}'"
            )
        from maskfm.data.convert_modelnet_cache import read_pickled_cache

        points, labels = read_pickled_cache(dat)
        return self._derive({"points": points, "labels": labels}, dat, source, target)

    def _raw_available(self) -> bool:
        sid = self.entries[0][0]
        return (self.root / sid.rsplit("_", 1)[0] / f"{sid}.txt").is_file()

    def _try_derived(self, path: Path, source: str) -> tuple[np.ndarray, list[str]] | None:
        """Load a derived cache if it is readable and matches; else log why and return None."""
        try:
            data = load_point_cache(path)
        except CorruptPointCloudError as e:
            log.warning("ModelNet40: ignoring unreadable cache (%s); it will be rebuilt", e)
            return None
        why = None
        pts = data["points"]
        if "ids" not in data:  # not a derived cache (e.g. a converted .dat with the same name)
            log.debug("ModelNet40: '%s' is not a derived cache", path)
            return None
        if _meta_str(data, "source") != source:
            log.info(
                "ModelNet40: not using cache '%s': it was built from %r, not %r",
                path, _meta_str(data, "source", "?"), source,
            )  # fmt: skip
            return None
        if data["ids"].tolist() != self.ids:
            why = f"its shape ids differ from '{self.list_file}'"
        elif not np.array_equal(data["labels"], self.labels):
            why = "its labels differ from the list file"
        elif pts.shape[1:] != (self.num_points, 3) or _meta_str(data, "sampling") != self.sampling:
            why = f"it holds {pts.shape[1:]} clouds sampled by {_meta_str(data, 'sampling')!r}"
        if why is not None:
            log.warning("ModelNet40: not using cache '%s': %s", path, why)
            return None
        problems = data["problems"].tolist() if "problems" in data else [""] * len(pts)
        return pts, problems

    def _save(self, target: Path, points: np.ndarray, problems: list[str], source: str) -> Path:
        try:
            save_point_cache(
                target, points, self.labels, ids=np.array(self.ids), problems=np.array(problems),
                sampling=self.sampling, normalized=True, source=source,
            )  # fmt: skip
            log.info("ModelNet40: wrote cache '%s' (%d shapes)", target, len(points))
        except OSError as e:
            log.warning(
                "ModelNet40: cannot write cache '%s' (%s); keeping it in memory only. Pass "
                "cache_dir= a writable folder to reuse it across runs.", target, e,
            )  # fmt: skip
        return target

    def _problem(self, message: str, problems: list[str], j: int, missing: bool = False) -> None:
        if not self.skip_corrupt:
            raise (FileNotFoundError if missing else CorruptPointCloudError)(message)
        log.warning("ModelNet40: skipping unusable shape: %s", message)
        problems[j] = message

    def _sample(self, xyz: np.ndarray, normalized: bool) -> tuple[np.ndarray, np.ndarray]:
        """(B, N, 3) -> ((B, num_points, 3) normalised + subsampled, ok (B,))."""
        ok = np.ones(len(xyz), dtype=bool)
        n = xyz.shape[1]
        if self.sampling == "first":
            xyz = xyz[:, : self.num_points]
            if not normalized or n > self.num_points:  # original: crop, then pc_normalize
                xyz, ok = _normalize_rows(xyz)
            return xyz, ok
        if not normalized:
            xyz, ok = _normalize_rows(xyz)
        if n > self.num_points:
            xyz = farthest_point_subsample(xyz, self.num_points)
        return xyz.astype(np.float32, copy=False), ok

    def _derive(
        self, data: dict[str, np.ndarray], path: Path, source: str, target: Path
    ) -> tuple[np.ndarray, list[str], Path]:
        """Normalise + subsample the clouds of a converted/pickled cache for this dataset."""
        pts, labels = data["points"], data["labels"]
        if len(pts) != len(self.entries):
            raise CorruptPointCloudError(
                f"'{path}' holds {len(pts)} shapes but '{self.list_file}' lists {len(self.entries)}"
            )
        if not np.array_equal(labels, self.labels):
            row = int(np.flatnonzero(labels != self.labels)[0])
            raise CorruptPointCloudError(
                f"'{path}' row {row} has label {labels[row]}, but '{self.list_file}' line "
                f"{self.entries[row][2]} ({self.ids[row]}) means {self.labels[row]}"
            )
        if pts.shape[1] < self.num_points:
            raise CorruptPointCloudError(
                f"'{path}' has {pts.shape[1]} points per shape, fewer than num_points={self.num_points}"
            )
        problems = [""] * len(pts)
        xyz = pts[..., :3]
        finite = np.isfinite(xyz).all(axis=(1, 2))
        for j in np.flatnonzero(~finite):
            self._problem(f"'{path}' row {j} ({self.ids[j]}) has NaN/inf coordinates", problems, j)
        largest = np.abs(np.where(finite[:, None, None], xyz, 0)).max(axis=(1, 2))
        for j in np.flatnonzero(largest > MAX_ABS_COORD_UNIT):
            self._problem(f"'{path}' row {j} ({self.ids[j]}) has a coordinate beyond "
                          f"±{MAX_ABS_COORD_UNIT:g} ({largest[j]:g})", problems, j)  # fmt: skip
        usable = finite & (largest <= MAX_ABS_COORD_UNIT)
        xyz = np.where(usable[:, None, None], xyz, 1.0)  # placeholders, never served
        out, ok = self._sample(xyz, normalized=bool(data.get("normalized", False)))
        for j in np.flatnonzero(~ok & usable):
            self._problem(f"'{path}' row {j} ({self.ids[j]}): all points coincide", problems, j)
        if target.resolve() == path.resolve():  # a converted file named like the derived cache
            return out, problems, target
        return out, problems, self._save(target, out, problems, source)

    def _build_raw(self, target: Path) -> tuple[np.ndarray, list[str], Path]:
        """Read every raw text file and normalise + subsample, in chunks (batched FPS)."""
        m = len(self.entries)
        log.info("ModelNet40: building the %s cache from %d raw files (one-time)", self.split, m)
        out = np.zeros((m, self.num_points, 3), dtype=np.float32)
        problems = [""] * m
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            by_len: dict[int, list[tuple[int, np.ndarray]]] = {}
            for j, xyz in pending:
                by_len.setdefault(len(xyz), []).append((j, xyz))
            for group in by_len.values():
                rows = np.array([j for j, _ in group])
                sampled, ok = self._sample(np.stack([x for _, x in group]), normalized=False)
                out[rows] = sampled
                for j in rows[~ok]:
                    path = self.root / self.ids[j].rsplit("_", 1)[0] / f"{self.ids[j]}.txt"
                    self._problem(f"'{path}': all points coincide", problems, int(j))
            pending.clear()

        for j, (sid, _, line) in enumerate(self.entries):
            path = self.root / sid.rsplit("_", 1)[0] / f"{sid}.txt"
            try:
                pending.append((j, _read_modelnet_txt(path, self.num_points, self.list_file, line)))
            except FileNotFoundError as e:
                self._problem(str(e), problems, j, missing=True)
            except CorruptPointCloudError as e:
                self._problem(str(e), problems, j)
            if len(pending) >= _FPS_CHUNK:
                flush()
            if (j + 1) % 1000 == 0:
                log.info("ModelNet40: %d / %d shapes", j + 1, m)
        flush()
        return out, problems, self._save(target, out, problems, "raw")


# --------------------------------------------------------------------------------------
# ScanObjectNN
# --------------------------------------------------------------------------------------


class ScanObjectNN(_PointCloudDataset):
    """ScanObjectNN h5 files (``root`` = ``.../ScanObjectNN``), 15 classes.

    ``variant``: "obj_bg" = ``main_split/{training,test}_objectdataset.h5``; "obj_only" =
    ``main_split_nobg/{training,test}_objectdataset.h5``; "hardest" (PB_T50_RS) =
    ``main_split/{training,test}_objectdataset_augmentedrot_scale75.h5``. Keys ``data`` float
    (N, 2048, 3) and ``label`` int (N,). Coordinates are served **raw** (no normalisation).

    Train split: a random permutation of the stored points, cut to ``num_points`` (random
    subset + shuffled order). Test split (and ``deterministic=True``): ``test_sampling="fps"``
    (default) takes ``num_points`` by FPS (start index 0, as the originals' test-time
    ``misc.fps``), ``"first"`` the first ``num_points`` stored points; with ``num_points`` equal
    to the stored count the points are returned unchanged.

    A file-level problem (unreadable, wrong keys/shapes, no objects, too few points, no usable
    row) always raises; rows with NaN/inf coordinates, a coordinate beyond
    ``±MAX_ABS_COORD_METRES`` or an out-of-range label raise too, or with ``skip_corrupt=True``
    are skipped and counted.
    """

    classes = list(SCANOBJECTNN_CLASSES)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        variant: str = "obj_bg",
        num_points: int = 2048,
        skip_corrupt: bool = False,
        test_sampling: str = "fps",
        deterministic: bool = False,
    ) -> None:
        super().__init__()
        if variant not in SCANOBJECTNN_VARIANTS:
            raise ValueError(
                f"variant must be one of {sorted(SCANOBJECTNN_VARIANTS)}, got {variant!r}"
            )
        if test_sampling not in ("fps", "first"):
            raise ValueError(f"test_sampling must be 'fps' or 'first', got {test_sampling!r}")
        self.root = _check_dir(root, "ScanObjectNN root")
        self.split = _check_split(split)
        self.variant = variant
        self.num_points = num_points
        self.skip_corrupt = skip_corrupt
        self.random_order = split == "train" and not deterministic
        sub, pattern = SCANOBJECTNN_VARIANTS[variant]
        self.path = (
            self.root / sub / pattern.format(split="training" if split == "train" else "test")
        )
        if not self.path.is_file():
            raise FileNotFoundError(
                f"ScanObjectNN {variant} {split} file '{self.path}' does not exist"
            )
        data, labels = self._read(self.path)
        bad_xyz = ~np.isfinite(data).all(axis=(1, 2))
        largest = np.abs(np.where(bad_xyz[:, None, None], 0, data)).max(axis=(1, 2))
        bad_label = (labels < 0) | (labels >= len(self.classes))
        problems = {
            **{int(j): f"row {j} has labels {labels[j]} outside [0, {len(self.classes)})"
               for j in np.flatnonzero(bad_label)},
            **{int(j): f"row {j} has a coordinate beyond ±{MAX_ABS_COORD_METRES:g} m "
                       f"({largest[j]:g}), implausible for an object scan"
               for j in np.flatnonzero(largest > MAX_ABS_COORD_METRES)},
            **{int(j): f"row {j} has NaN/inf coordinates" for j in np.flatnonzero(bad_xyz)},
        }  # fmt: skip
        if problems:
            first = min(problems)
            msg = f"'{self.path}': {len(problems)} unusable rows (first: {problems[first]})"
            if len(problems) == len(data):
                raise CorruptPointCloudError(f"{msg}: none of its {len(data)} rows is usable")
            if not skip_corrupt:
                raise CorruptPointCloudError(msg)
            log.warning("ScanObjectNN: skipping %s", msg)
        self._bad = set(problems)
        data[np.array(sorted(problems), dtype=np.int64)] = 1.0  # placeholders, never served
        if not self.random_order and num_points < data.shape[1]:
            if test_sampling == "fps":
                data = farthest_point_subsample(data, num_points)
            else:
                data = np.ascontiguousarray(data[:, :num_points])
        self.points = data
        self.labels = labels.astype(np.int64)

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            import h5py
        except ImportError as e:  # pragma: no cover - h5py is a dependency
            raise ImportError("ScanObjectNN needs h5py: pip install h5py") from e
        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in ("data", "label") if k not in f]
                if missing:
                    raise CorruptPointCloudError(
                        f"'{path}' lacks the dataset(s) {missing} (has {sorted(f.keys())})"
                    )
                data, labels = f["data"][()], f["label"][()]
        except (OSError, KeyError, TypeError) as e:
            raise CorruptPointCloudError(
                f"cannot read HDF5 file '{path}': {type(e).__name__}: {e}"
            ) from e
        if (
            not isinstance(data, np.ndarray)
            or data.ndim != 3
            or data.shape[2] != 3
            or data.dtype.kind not in "fiu"
        ):
            shape = getattr(data, "shape", None)
            raise CorruptPointCloudError(
                f"'{path}': 'data' must be a float (N, P, 3) array, got {getattr(data, 'dtype', type(data))} {shape}"
            )
        if data.shape[1] < self.num_points:
            raise CorruptPointCloudError(
                f"'{path}' stores {data.shape[1]} points per object, fewer than num_points={self.num_points}"
            )
        labels = np.asarray(labels)
        if (
            labels.dtype.kind not in "iu"
            or labels.ndim not in (1, 2)
            or labels.size != labels.shape[0]
        ):
            raise CorruptPointCloudError(
                f"'{path}': 'label' must be an integer (N,) array, got {labels.dtype} {labels.shape}"
            )
        labels = labels.reshape(-1)
        if len(data) == 0:
            raise CorruptPointCloudError(f"'{path}' holds no objects ('data' has shape {data.shape})")
        if len(labels) != len(data):
            raise CorruptPointCloudError(
                f"'{path}' has {len(data)} objects in 'data' but {len(labels)} in 'label'"
            )
        return data.astype(np.float32, copy=False), labels

    def __len__(self) -> int:
        return len(self.points)

    def _describe(self) -> str:
        return f"ScanObjectNN '{self.path}'"

    def _load(self, idx: int) -> tuple[np.ndarray, int]:
        pts = self.points[idx]
        if self.random_order:
            pts = pts[torch.randperm(len(pts))[: self.num_points].numpy()]
        return np.ascontiguousarray(pts), int(self.labels[idx])


# --------------------------------------------------------------------------------------
# DataModule
# --------------------------------------------------------------------------------------


class PointCloudDataModule(LoaderDataModule):
    """Point-cloud loaders: train (shuffled, drop_last), val (test split) and SVM-eval loaders.

    ``dataset`` picks the source: "synthetic" (:class:`SyntheticShapes3D`, ``num_train`` /
    ``num_val`` samples, ``seed``), "shapenet55", "modelnet40" or "scanobjectnn" (``root``
    required; ``num_train`` / ``num_val`` / ``seed`` unused). ``eval_dataloaders()`` returns
    unshuffled, unaugmented ``(train, test)`` loaders of ``eval_dataset`` (default: ``dataset``;
    e.g. pre-train on ShapeNet-55 and evaluate a linear SVM on ModelNet40 with ``eval_root``),
    sampled deterministically. ``batch_size`` is per device.

    With ``augment`` the train batches get :func:`scale_and_translate` in
    ``on_after_batch_transfer`` (on the device, vectorised, torch RNG) while
    ``trainer.training``; validation and eval batches are never augmented.
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        num_points: int = 1024,
        batch_size: int = 32,
        num_workers: int = 0,
        augment: bool = True,
        skip_corrupt: bool = False,
        variant: str | None = None,
        num_train: int = 2048,
        num_val: int = 512,
        seed: int = 0,
        trust_pickle: bool = False,
        eval_dataset: str | None = None,
        eval_root: str | None = None,
        eval_variant: str | None = None,
        sampling: str = "fps",
        cache_dir: str | None = None,
        whole: bool = False,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for name in (dataset, eval_dataset):
            if name is not None and name not in DATASETS:
                raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
        if dataset == "synthetic" and num_train < batch_size:
            raise ValueError(
                f"num_train={num_train} is smaller than batch_size={batch_size}; "
                "with drop_last=True the train loader would be empty"
            )
        self.eval_name = eval_dataset or dataset
        if eval_dataset is None or eval_dataset == dataset:
            eval_root = root if eval_root is None else eval_root
            eval_variant = variant if eval_variant is None else eval_variant
        for name, v in ((dataset, variant), (self.eval_name, eval_variant)):
            if v is not None and name != "scanobjectnn":
                raise ValueError(
                    f"variant={v!r} only applies to dataset 'scanobjectnn', not {name!r}"
                )
        self.dataset = dataset
        self.root, self.eval_root = root, eval_root
        self.variant, self.eval_variant = variant, eval_variant
        self.num_points = num_points
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.pin_memory = pin_memory
        self.class_names = self._classes(dataset, root)
        self.num_classes = len(self.class_names)
        self.eval_class_names = (
            self.class_names if self.eval_name == dataset and eval_root == root
            else self._classes(self.eval_name, eval_root)
        )  # fmt: skip
        self.eval_num_classes = len(self.eval_class_names)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._eval_sets: tuple[Dataset, Dataset] | None = None

    @staticmethod
    def _classes(name: str, root: str | None) -> list[str]:
        if name == "synthetic":
            return list(CLASSES)
        if root is None:
            raise ValueError(f"dataset {name!r} needs a root folder (got root=None)")
        if name == "shapenet55":
            return ShapeNet55.read_classes(root)
        if name == "modelnet40":
            return ModelNet40.read_classes(root)
        _check_dir(root, "ScanObjectNN root")
        return list(SCANOBJECTNN_CLASSES)

    def _make(self, name: str, split: str, *, eval_set: bool) -> Dataset:
        hp = self.hparams
        root = self.eval_root if eval_set else self.root
        variant = self.eval_variant if eval_set else self.variant
        if name == "synthetic":
            n = hp.num_train if split == "train" else hp.num_val
            return SyntheticShapes3D(n, self.num_points, hp.seed, split)
        if name == "shapenet55":
            whole = hp.whole and split == "train" and not eval_set
            return ShapeNet55(root, split, self.num_points, hp.skip_corrupt, whole, eval_set)
        if name == "modelnet40":
            return ModelNet40(
                root, split, self.num_points, hp.sampling, hp.skip_corrupt, hp.trust_pickle,
                hp.cache_dir, deterministic=eval_set,
            )  # fmt: skip
        return ScanObjectNN(
            root,
            split,
            variant or "obj_bg",
            self.num_points,
            hp.skip_corrupt,
            deterministic=eval_set,
        )

    def prepare_data(self) -> None:
        """Build the ModelNet40 caches once (local rank 0) before ``setup`` on every rank."""
        if self.dataset == "modelnet40":
            for split in _SPLITS:
                self._make("modelnet40", split, eval_set=False)
        if self.eval_name == "modelnet40" and (
            self.dataset != "modelnet40" or self.eval_root != self.root
        ):
            for split in _SPLITS:
                self._make("modelnet40", split, eval_set=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._make(self.dataset, "train", eval_set=False)
            self.val_set = self._make(self.dataset, "test", eval_set=False)


    def eval_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """(train, test) loaders of the eval dataset: unshuffled, unaugmented, deterministic."""
        if self._eval_sets is None:
            self._eval_sets = (
                self._make(self.eval_name, "train", eval_set=True),
                self._make(self.eval_name, "test", eval_set=True),
            )
        return self.loader(self._eval_sets[0], train=False), self.loader(
            self._eval_sets[1], train=False
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if self.augment and trainer is not None and trainer.training and isinstance(batch, dict):
            batch = {**batch, "points": scale_and_translate(batch["points"])}
        return batch
