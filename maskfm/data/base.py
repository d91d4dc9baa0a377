"""What every maskfm DataModule shares: the loaders over a train and a val dataset."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import lightning as L
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
        if train and len(dataset) < self.batch_size:  # drop_last: the loader would be empty
            source = getattr(self, "hparams", {}).get("root") or type(self).__name__
            raise UserInputError(
                f"{source}: the training set has {len(dataset)} samples, fewer than one batch "
                f"(data.batch_size={self.batch_size}), so training would run no step; lower data.batch_size "
                "or add data")
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
        return self.loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        self.setup("fit")
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
