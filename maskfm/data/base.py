"""What every maskfm DataModule and dataset shares: the loaders over a train and a val dataset,
corrupt-item skipping, the data-root check and seeded generated samples."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sized
from pathlib import Path
from typing import TypeVar, cast

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from maskfm.errors import UserInputError

log = logging.getLogger(__name__)
T = TypeVar("T")


class LoaderDataModule(L.LightningDataModule):
    """Subclasses set ``batch_size`` (per device), ``num_workers`` and, in ``setup``,
    ``train_set`` / ``val_set``. Training shuffles and drops the last partial batch."""

    batch_size: int
    num_workers: int = 0
    pin_memory: bool = False
    train_set: Dataset | None = None
    val_set: Dataset | None = None
    collate_fn = None  # a DataLoader collate function; None = torch's default

    def model_inputs(self) -> dict:
        """Facts the method's constructor needs from the data (a text vocabulary's size and
        special ids); none by default."""
        return {}

    def loader(self, dataset: Dataset, train: bool) -> DataLoader:
        sized = cast(Sized, dataset)  # a map-style dataset
        if train and len(sized) < self.batch_size:  # drop_last: the loader would be empty
            source = getattr(self, "hparams", {}).get("root") or type(self).__name__
            raise UserInputError(
                f"{source}: the training set has {len(sized)} samples, fewer than one batch "
                f"(data.batch_size={self.batch_size}), so training would run no step; lower data.batch_size "
                "or add data"
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.train_set is not None, "setup('fit') sets train_set"
        return self.loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.val_set is not None, "setup('fit') sets val_set"
        return self.loader(self.val_set, train=False)


def load_or_skip(
    idx: int,
    num_items: int,
    load: Callable[[int], T],
    bad: set[int],
    skip_corrupt: bool,
    errors: tuple[type[Exception], ...],
    what: str,
    exhausted: type[Exception],
) -> tuple[int, T, int]:
    """Load item ``idx``, or with ``skip_corrupt`` the next usable one (wrapping around).

    Every dataset with a ``data.skip_corrupt`` option walks its items this way: an item whose
    ``load`` raises one of ``errors`` is re-raised (naming the file or record), or, when
    skipping, remembered in ``bad`` (per process), logged and counted.

    Returns ``(index loaded, loaded value, number of items skipped to reach it)``.
    """
    if not -num_items <= idx < num_items:
        raise IndexError(f"index {idx} out of range for {num_items} {what}")
    idx %= num_items
    for skipped in range(num_items):
        j = (idx + skipped) % num_items
        if j in bad:
            continue
        try:
            return j, load(j), skipped
        except errors as e:
            if not skip_corrupt:
                raise
            bad.add(j)
            log.warning("skipping an unusable item of %s: %s", what, e)
    raise exhausted(f"none of the {num_items} {what} is usable")


def check_dir(path: str | os.PathLike | None, what: str, *, one_error: bool = False) -> Path:
    """``path`` (``~`` expanded) if it is an existing folder, else raise naming it as ``what``.

    None raises ValueError. A missing path raises FileNotFoundError and a file
    NotADirectoryError, or with ``one_error`` both FileNotFoundError ("does not exist or is
    not a directory").
    """
    if path is None:
        raise ValueError(f"{what} is required (got None)")
    p = Path(path).expanduser()
    if one_error and not p.is_dir():
        raise FileNotFoundError(f"{what} '{p}' does not exist or is not a directory")
    if not p.exists():
        raise FileNotFoundError(f"{what} '{p}' does not exist")
    if not p.is_dir():
        raise NotADirectoryError(f"{what} '{p}' is not a directory")
    return p


class SeededSamples:
    """Generated data where sample ``i`` is a pure function of ``(seed, split, i)``.

    Checks ``num_samples``, ``split`` (a key of ``split_ids``) and ``seed``; :meth:`rng` gives
    sample ``i``'s ``numpy.random.default_rng([seed, split_ids[split], i])``.
    """

    def __init__(self, num_samples: int, seed: int, split: str, split_ids: dict[str, int]) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if split not in split_ids:
            raise ValueError(f"split must be one of {sorted(split_ids)}, got {split!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy SeedSequence), got {seed}")
        self.num_samples, self.seed, self.split = num_samples, seed, split
        self._split_id = split_ids[split]

    def __len__(self) -> int:
        return self.num_samples

    def rng(self, idx: int) -> tuple[int, np.random.Generator]:
        """(``idx`` wrapped to ``[0, num_samples)``, the generator of that sample)."""
        if not -self.num_samples <= idx < self.num_samples:
            raise IndexError(f"index {idx} out of range for {self.num_samples} samples")
        idx %= self.num_samples
        return idx, np.random.default_rng([self.seed, self._split_id, idx])
