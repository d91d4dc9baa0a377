"""Held-out splits and the linear probe's augmented loader of the image datamodules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskfm.data.images import (
    CLASSES,
    ImageFolderDataModule,
    SyntheticImageDataModule,
    seeded_split,
)
from maskfm.errors import UserInputError
from tests.helpers import make_image_folder


def files_of(loader) -> list[str]:
    """The file paths a loader over (a Subset of) an ImageFolderDataset reads, in order."""
    ds = loader.dataset
    if hasattr(ds, "indices"):
        return [ds.dataset.samples[i][0] for i in ds.indices]
    return [path for path, _ in ds.samples]


def test_seeded_split_is_per_class_seeded_and_disjoint():
    labels = [0] * 10 + [1] * 5 + [2] * 1
    train, held = seeded_split(labels, 0.2, seed=0)
    assert sorted(train + held) == list(range(16)) and not set(train) & set(held)
    assert [labels[i] for i in held].count(0) == 2  # round(0.2 * 10)
    assert [labels[i] for i in held].count(1) == 1  # round(0.2 * 5)
    assert 15 in train  # a class of one file stays in training
    assert seeded_split(labels, 0.2, seed=0) == (train, held)
    assert seeded_split(labels, 0.2, seed=1)[1] != held
    _, small = seeded_split([0, 0, 1, 1], 0.01, seed=0)  # at least one per class
    _, big = seeded_split([0, 0, 1, 1], 0.99, seed=0)  # at least one left to train
    assert [i // 2 for i in small] == [0, 1] and [i // 2 for i in big] == [0, 1]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "pics", classes=("a", "b", "c"), per_class=5)


def test_val_fraction_holds_out_the_same_files_in_training_and_evaluation(folder: Path):
    dm = ImageFolderDataModule(str(folder), img_size=16, batch_size=2, num_workers=0,
                               val_fraction=0.4, pin_memory=False)  # fmt: skip
    train, held = dm.eval_dataloaders()
    train_files, held_files = files_of(train), files_of(held)
    assert len(held_files) == 6 and len(train_files) == 9  # 2 of each class's 5
    assert not set(train_files) & set(held_files)
    assert sorted(train_files + held_files) == sorted(str(p) for p in folder.rglob("*.png"))
    assert {Path(f).parent.name for f in held_files} == {"a", "b", "c"}
    assert sorted(files_of(dm.train_dataloader())) == sorted(train_files)  # pretraining too
    assert files_of(dm.val_dataloader()) == held_files
    labels = torch.cat([b["label"] for b in held]).tolist()
    assert labels == [["a", "b", "c"].index(Path(f).parent.name) for f in held_files]
    batch = next(iter(train))
    assert batch["image"].shape == (2, 3, 16, 16)

    again = ImageFolderDataModule(str(folder), img_size=16, batch_size=2, num_workers=0,
                                  val_fraction=0.4, pin_memory=False)  # fmt: skip
    assert files_of(again.eval_dataloaders()[1]) == held_files  # fixed seed: same split
    other = ImageFolderDataModule(str(folder), img_size=16, batch_size=2, num_workers=0,
                                  val_fraction=0.4, split_seed=3, pin_memory=False)  # fmt: skip
    assert files_of(other.eval_dataloaders()[1]) != held_files


def test_evaluation_without_a_held_out_split_says_how_to_get_one(folder: Path):
    dm = ImageFolderDataModule(str(folder), img_size=16, batch_size=2, num_workers=0)
    with pytest.raises(UserInputError, match="data.val_root=<dir> or data.val_fraction"):
        dm.eval_dataloaders()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\)"),
        ({"val_fraction": 0.2, "val_root": "VAL"}, "not both"),
    ],
)
def test_bad_split_options(folder: Path, kwargs, match):
    if kwargs.get("val_root") == "VAL":
        kwargs["val_root"] = str(folder)
    with pytest.raises(ValueError, match=match):
        ImageFolderDataModule(str(folder), num_workers=0, **kwargs)


def test_single_file_classes_cannot_be_split(tmp_path: Path):
    root = make_image_folder(tmp_path / "one", per_class=1)
    dm = ImageFolderDataModule(str(root), img_size=16, batch_size=1, num_workers=0,
                               val_fraction=0.5, pin_memory=False)  # fmt: skip
    with pytest.raises(UserInputError, match="holds out no file"):
        dm.eval_dataloaders()


def test_augmented_train_loader_of_an_image_folder(folder: Path):
    dm = ImageFolderDataModule(str(folder), img_size=16, batch_size=4, num_workers=0,
                               val_fraction=0.4, pin_memory=False)  # fmt: skip
    loader = dm.augmented_train_dataloader()
    held = set(files_of(dm.eval_dataloaders()[1]))
    assert not set(files_of(loader)) & held and len(files_of(loader)) == 9
    batches = list(loader)
    assert len(batches) == 2  # 9 files, drop_last
    assert batches[0]["image"].shape == (4, 3, 16, 16) and batches[0]["label"].dtype == torch.long
    assert len(dm.augmented_train_dataloader(batch_size=3)) == 3
    with pytest.raises(UserInputError, match="fewer than one probe batch of 10"):
        dm.augmented_train_dataloader(batch_size=10)


def test_augmented_train_loader_of_the_synthetic_pictures():
    dm = SyntheticImageDataModule(img_size=32, num_train=8, num_val=4, batch_size=4)
    torch.manual_seed(0)
    batches = [b for _ in range(2) for b in dm.augmented_train_dataloader()]
    assert len(batches) == 4 and all(b["image"].shape == (4, 3, 32, 32) for b in batches)
    labels = sorted(dm.train_set[i]["label"] for i in range(8))
    assert sorted(torch.cat([b["label"] for b in batches[:2]]).tolist()) == labels
    assert all(0 <= y < len(CLASSES) for y in labels)
    # crops and flips: no augmented picture equals an unaugmented one
    plain = torch.stack([dm.train_set[i]["image"] for i in range(8)])
    augmented = torch.cat([b["image"] for b in batches])
    assert (augmented[:, None] - plain[None]).abs().flatten(2).amax(-1).min() > 1e-3
