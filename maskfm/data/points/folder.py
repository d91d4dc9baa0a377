"""``data=point_folder``: a user's own scans and models under one folder.

Layout (one rule, checked on every file under ``root`` with a supported suffix; hidden files and
folders, such as the cache, are ignored):

- **class** = the first folder below ``root`` (after a ``train``/``test`` folder) that holds the
  file: ``root/chair/a.ply``, ``root/train/chair/a.ply`` and ``root/chair/train/a.off`` (raw
  ModelNet40) are all ``chair``. Labels index the sorted class names. Files directly in
  ``root`` (or directly in ``root/train``, ``root/test``) are unlabelled (label -1): the folder
  pre-trains but has no evaluation loaders. Labelled and unlabelled files cannot be mixed.
- **split** = the ``train`` or ``test`` folder on the file's path, if any file has one (then
  every file must). Otherwise each class (or the unlabelled set) is split by a seeded
  permutation: ``round(n * test_fraction)`` files, at least 1 and at most ``n - 1``, go to
  ``test`` (none for a class of one file); the permutation is
  ``numpy.random.default_rng([seed, crc32(class name)]).permutation(n)`` of the class's files
  sorted by path, and its first files are the test files.

Every file except ``.npy`` is read (meshes: sampled to ``mesh_points`` points, see
:mod:`.files`) once, when the dataset is built, and cached as a plain ``.npy`` in ``cache_dir``
(default ``root/.maskfm_cache``; kept in memory with a warning if it is not writable). The
cache name holds a hash of the file's absolute path, modification time and size and, for mesh
suffixes, the sampling settings: a changed file or setting is read again; stale entries stay
until the folder is deleted. Samples are served like ShapeNet-55's: a random subset of
``num_points`` stored points (seeded by the index for evaluation sets), then centred and scaled
to the unit sphere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskfm.data.base import check_dir
from maskfm.data.points.common import (
    CorruptPointCloudError,
    _check_points,
    _check_split,
    _PointCloudDataset,
    pc_normalize,
)
from maskfm.data.points.files import (
    MESH_SAMPLINGS,
    MESH_SUFFIXES,
    POINT_SUFFIXES,
    read_cloud,
    read_npy,
)
from maskfm.data.points.registry import PointSet, register_point_dataset

log = logging.getLogger(__name__)

SUFFIXES = tuple(sorted(set(POINT_SUFFIXES) | set(MESH_SUFFIXES)))
CACHE_DIRNAME = ".maskfm_cache"
CACHE_VERSION = 1
# Users' scans come in any unit (a 2 m object in millimetres is 2000): the bound only catches
# garbage that would squash the normalised cloud or overflow float32 sums.
MAX_ABS_COORD_FOLDER = 1e6


@dataclass(frozen=True)
class FolderFile:
    """One point or mesh file: its path, its path relative to root, class and split folder."""

    path: Path
    rel: str
    class_name: str | None
    split: str | None


def scan_folder(root: str | os.PathLike | None) -> list[FolderFile]:
    """Every supported file under ``root``, sorted by relative path (see the module's rule)."""
    base = check_dir(root, "point folder root")
    found = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in SUFFIXES:
                continue
            path = Path(dirpath) / name
            parts = path.relative_to(base).parts[:-1]
            splits = [p for p in parts if p in ("train", "test")]
            if len(splits) > 1:
                raise CorruptPointCloudError(
                    f"'{path}': more than one train/test folder on its path under '{base}'"
                )
            classes = [p for p in parts if p not in ("train", "test")]
            found.append(
                FolderFile(
                    path,
                    path.relative_to(base).as_posix(),
                    classes[0] if classes else None,
                    splits[0] if splits else None,
                )
            )
    if not found:
        raise CorruptPointCloudError(
            f"no point or mesh files ({', '.join(SUFFIXES)}) under '{base}'"
        )
    found.sort(key=lambda f: f.rel)
    for attr, what in (("split", "a train/ or test/ folder"), ("class_name", "a class folder")):
        with_it = [f for f in found if getattr(f, attr) is not None]
        if with_it and len(with_it) < len(found):
            other = next(f for f in found if getattr(f, attr) is None)
            raise CorruptPointCloudError(
                f"'{base}' mixes layouts: '{with_it[0].path}' is in {what} but "
                f"'{other.path}' is not; put every file in one (see data=point_folder)"
            )
    return found


def folder_classes(root: str | None) -> list[str]:
    """Sorted class folder names (the label order); [] for an unlabelled folder."""
    return sorted({f.class_name for f in scan_folder(root) if f.class_name is not None})


def split_files(
    files: list[FolderFile], split: str, test_fraction: float, seed: int
) -> list[FolderFile]:
    """The files of ``split`` ("train" or "test") by the module's rule, sorted by path."""
    _check_split(split)
    if files[0].split is not None:
        return [f for f in files if f.split == split]
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    groups: dict[str, list[FolderFile]] = {}
    for f in files:
        groups.setdefault(f.class_name or "", []).append(f)
    test: set[str] = set()
    for name, group in groups.items():
        n = len(group)
        n_test = min(n - 1, max(1, round(n * test_fraction)))
        order = np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(n)
        test.update(group[i].rel for i in order[:n_test])
    return [f for f in files if (f.rel in test) == (split == "test")]


class PointFolder(_PointCloudDataset):
    """One split of a point folder (module docstring: layout, split, cache and sampling).

    Files that cannot be used (unreadable, empty, a mesh without surface, NaN/inf or
    coordinates beyond ``±MAX_ABS_COORD_FOLDER``, fewer than ``num_points`` points) raise
    :class:`CorruptPointCloudError` naming the file, or with ``skip_corrupt=True`` are skipped
    and counted in ``"skipped"``. Reading a format that needs open3d without it installed
    raises :class:`~maskfm.data.points.files.MissingExtraError` naming the extra.
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str = "train",
        num_points: int = 1024,
        skip_corrupt: bool = False,
        test_fraction: float = 0.2,
        mesh_sampling: str = "uniform",
        mesh_points: int = 8192,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        deterministic: bool = False,
    ) -> None:
        super().__init__()
        if mesh_sampling not in MESH_SAMPLINGS:
            raise ValueError(
                f"mesh_sampling must be one of {MESH_SAMPLINGS}, got {mesh_sampling!r}"
            )
        if num_points < 1 or mesh_points < num_points:
            raise ValueError(
                f"need 1 <= num_points <= mesh_points, got num_points={num_points}, "
                f"mesh_points={mesh_points}"
            )
        self.root = check_dir(root, "point folder root")
        self.split = _check_split(split)
        self.num_points, self.skip_corrupt, self.deterministic = (
            num_points,
            skip_corrupt,
            deterministic,
        )
        self.mesh_sampling, self.mesh_points, self.seed = mesh_sampling, mesh_points, seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else self.root / CACHE_DIRNAME
        everything = scan_folder(self.root)
        self.classes = sorted({f.class_name for f in everything if f.class_name is not None})
        self.files = split_files(everything, split, test_fraction, seed)
        if not self.files:
            raise CorruptPointCloudError(
                f"the {split} split of '{self.root}' has no files (of {len(everything)}); "
                "add files or a test/ folder"
            )
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = [index[f.class_name] if f.class_name else -1 for f in self.files]
        self.problems = [""] * len(self.files)
        self.sources: list[Path | np.ndarray] = [self._cached(j) for j in range(len(self.files))]
        if all(self.problems):
            raise CorruptPointCloudError(
                f"none of the {len(self.files)} {split} files under '{self.root}' is usable "
                f"(first: {self.problems[0]})"
            )
        self._bad = {j for j, p in enumerate(self.problems) if p}

    def __len__(self) -> int:
        return len(self.files)

    def _describe(self) -> str:
        return f"point folder {self.split} under '{self.root}'"

    # ---- the cache ---------------------------------------------------------------------

    def cache_path(self, file: FolderFile) -> Path:
        """Where the points of ``file`` (as it is now) are cached."""
        stat = file.path.stat()
        key: dict = {
            "file": str(file.path.resolve()), "mtime_ns": stat.st_mtime_ns,
            "size": stat.st_size, "version": CACHE_VERSION,
        }  # fmt: skip
        if file.path.suffix.lower() in MESH_SUFFIXES:
            key.update(sampling=self.mesh_sampling, points=self.mesh_points, seed=self.seed)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", file.rel)[-80:]
        return self.cache_dir / f"{stem}-{digest}.npy"

    def _cached(self, j: int) -> Path | np.ndarray:
        """The .npy to serve file ``j`` from (its own, or its cache entry, written now if
        missing), or its points in memory; records a problem (or raises) if it is unusable."""
        file = self.files[j]
        if file.path.suffix.lower() == ".npy":
            return file.path
        try:
            target = self.cache_path(file)
            if target.is_file():
                try:
                    arr = np.load(target, allow_pickle=False)
                    if arr.ndim == 2 and arr.shape[1] == 3 and arr.dtype == np.float32:
                        return target
                except (OSError, ValueError, EOFError):
                    pass
                log.warning("point folder: rebuilding the unreadable cache entry '%s'", target)
            arr = read_cloud(file.path, self.mesh_points, self.mesh_sampling, self.seed)
            xyz = _check_points(arr, file.path, 1, max_abs=MAX_ABS_COORD_FOLDER)
        except (CorruptPointCloudError, FileNotFoundError) as e:
            if not self.skip_corrupt:
                raise
            log.warning("point folder: skipping unusable file: %s", e)
            self.problems[j] = str(e)
            return np.zeros((0, 3), dtype=np.float32)
        return self._save(target, xyz)

    def _save(self, target: Path, xyz: np.ndarray) -> Path | np.ndarray:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, xyz)
            os.replace(tmp, target)
            return target
        except OSError as e:
            log.warning(
                "point folder: cannot write the cache '%s' (%s); keeping the points in memory. "
                "Set data.cache_dir to a writable folder to reuse them across runs.", target, e,
            )  # fmt: skip
            return xyz
        finally:
            tmp.unlink(missing_ok=True)

    # ---- samples -----------------------------------------------------------------------

    def _load(self, idx: int) -> tuple[np.ndarray, int]:
        file, source = self.files[idx], self.sources[idx]
        arr = read_npy(source) if isinstance(source, Path) else source
        xyz = _check_points(arr, file.path, self.num_points, max_abs=MAX_ABS_COORD_FOLDER)
        gen = torch.Generator().manual_seed(idx) if self.deterministic else None
        choice = torch.randperm(len(xyz), generator=gen)[: self.num_points].numpy()
        try:
            return pc_normalize(xyz[choice]), self.labels[idx]
        except ValueError as e:
            raise CorruptPointCloudError(f"'{file.path}': {e}") from e


@register_point_dataset("point_folder", classes=folder_classes, build_once=True)
def _point_folder(s: PointSet) -> PointFolder:
    hp = s.hparams
    return PointFolder(
        s.root, s.split, s.num_points, hp.skip_corrupt, hp.test_fraction, hp.mesh_sampling,
        hp.mesh_points, hp.seed, hp.cache_dir, deterministic=s.eval_set,
    )  # fmt: skip
