"""ShapeNet-55 (Point-BERT's release): ``shapenet_pc/*.npy`` clouds listed in split files."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import torch

from maskfm.data.base import check_dir
from maskfm.data.points.common import (
    _SPLITS,
    CorruptPointCloudError,
    _check_points,
    _check_split,
    _PointCloudDataset,
    _read_list,
    pc_normalize,
)
from maskfm.data.points.registry import PointSet, register_point_dataset

log = logging.getLogger(__name__)

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
        root: str | os.PathLike | None,
        split: str = "train",
        num_points: int = 1024,
        skip_corrupt: bool = False,
        whole: bool = False,
        deterministic: bool = False,
    ) -> None:
        super().__init__()
        self.root = check_dir(root, "ShapeNet-55 root")
        self.split = _check_split(split)
        self.pc_dir = check_dir(self.root / "shapenet_pc", "ShapeNet-55 point-cloud folder")
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
    def read_classes(cls, root: str | os.PathLike | None) -> list[str]:
        """Sorted synset ids of the train + test lists (the label order)."""
        lists = cls._lists(check_dir(root, "ShapeNet-55 root"))
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


@register_point_dataset("shapenet55", classes=ShapeNet55.read_classes)
def _shapenet55(s: PointSet) -> ShapeNet55:
    whole = s.hparams.whole and s.split == "train" and not s.eval_set
    return ShapeNet55(s.root, s.split, s.num_points, s.hparams.skip_corrupt, whole, s.eval_set)
