"""What every maskfm DataModule shares: the loaders over a train and a val dataset."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset


class LoaderDataModule(L.LightningDataModule):
    """Subclasses set ``batch_size`` (per device), ``num_workers`` and, in ``setup``,
    ``train_set`` / ``val_set``. Training shuffles and drops the last partial batch."""

    batch_size: int
    num_workers: int = 0
    pin_memory: bool = False
    train_set: Dataset | None = None
    val_set: Dataset | None = None
    collate_fn = None  # a DataLoader collate function; None = torch's default

    def loader(self, dataset: Dataset, train: bool) -> DataLoader:
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
