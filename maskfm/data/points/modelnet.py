"""ModelNet40 (``modelnet40_normal_resampled``), normalised + subsampled once into a safe .npz cache."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import cast

import numpy as np

from maskfm.data.base import check_dir
from maskfm.data.points.cache import load_point_cache, save_point_cache
from maskfm.data.points.common import (
    _FPS_CHUNK,
    MAX_ABS_COORD_UNIT,
    CorruptPointCloudError,
    UntrustedPickleError,
    _ArrayPointCloudDataset,
    _check_points,
    _check_split,
    _normalize_rows,
    _read_list,
    farthest_point_subsample,
)
from maskfm.data.points.registry import PointSet, register_point_dataset

log = logging.getLogger(__name__)


def _meta_str(data: dict[str, np.ndarray], key: str, default: str = "") -> str:
    return str(data[key]) if key in data else default


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


class ModelNet40(_ArrayPointCloudDataset):
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
        root: str | os.PathLike | None,
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
        self.root = check_dir(root, "ModelNet40 root")
        self.split = _check_split(split)
        self.num_points = num_points
        self.sampling = sampling
        self.skip_corrupt = skip_corrupt
        self.trust_pickle = trust_pickle
        self.deterministic = deterministic
        self.random_order = split == "train" and not deterministic  # clouds hold num_points
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
    def read_classes(root: str | os.PathLike | None) -> list[str]:
        """Class names, in label order, from ``modelnet40_shape_names.txt``."""
        path = check_dir(root, "ModelNet40 root") / "modelnet40_shape_names.txt"
        return [name for name, _ in _read_list(path, "ModelNet40 shape-names file")]

    def _describe(self) -> str:
        return f"ModelNet40 {self.split} under '{self.root}'"

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

    def _problem(
        self, message: str, problems: list[str], j: int | np.integer, missing: bool = False
    ) -> None:
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
        finite = cast(np.ndarray, np.isfinite(xyz).all(axis=(1, 2)))  # (M,) bool
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


@register_point_dataset("modelnet40", classes=ModelNet40.read_classes, build_once=True)
def _modelnet40(s: PointSet) -> ModelNet40:
    hp = s.hparams
    return ModelNet40(
        s.root, s.split, s.num_points, hp.sampling, hp.skip_corrupt, hp.trust_pickle,
        hp.cache_dir, deterministic=s.eval_set,
    )  # fmt: skip
