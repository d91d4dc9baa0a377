"""Tests for maskfm.data.images: synthetic shapes, ImageFolder reading and corrupt files."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from maskfm.data.images import (
    CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CorruptImageError,
    ImageFolderDataModule,
    ImageFolderDataset,
    SyntheticImageDataModule,
    SyntheticShapes,
    eval_transform,
    mae_train_transform,
)

# ----------------------------------------------------------------------------- helpers


def _noise_image(seed: int, w: int = 40, h: int = 50) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


def _write(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise_image(seed).save(path)
    return path


def _truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    _noise_image(123).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root/cat/{0,1,2}.png and root/dog/{0,1,2}.jpg, 40x50 px each."""
    root = tmp_path / "train"
    for i in range(3):
        _write(root / "cat" / f"{i}.png", seed=i)
        _write(root / "dog" / f"{i}.jpg", seed=10 + i)
    return root


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_sample_shape_dtype_and_keys():
    ds = SyntheticShapes(4, img_size=32)
    s = ds[0]
    assert set(s) == {"image", "label", "skipped"}
    assert s["image"].shape == (3, 32, 32)
    assert s["image"].dtype == torch.float32
    assert isinstance(s["label"], int) and 0 <= s["label"] < len(CLASSES)
    assert s["skipped"] == 0
    assert len(ds) == 4
    with pytest.raises(IndexError):
        ds[4]


def test_synthetic_is_deterministic_and_seed_split_dependent():
    a = SyntheticShapes(8, img_size=32, seed=3)
    b = SyntheticShapes(8, img_size=32, seed=3)
    other_seed = SyntheticShapes(8, img_size=32, seed=4)
    other_split = SyntheticShapes(8, img_size=32, seed=3, split="test")
    for i in range(8):
        assert torch.equal(a[i]["image"], b[i]["image"])
        assert a[i]["label"] == b[i]["label"]
        assert not torch.equal(a[i]["image"], other_seed[i]["image"])
        assert not torch.equal(a[i]["image"], other_split[i]["image"])
    assert not torch.equal(a[0]["image"], a[1]["image"])


def test_synthetic_labels_cover_all_classes_and_images_are_textured():
    ds = SyntheticShapes(200, img_size=32)
    labels = []
    for i in range(len(ds)):
        s = ds[i]
        labels.append(s["label"])
        # normalised with std 0.25: per-image std > 0.2 means > 0.05 in [0, 1] pixel units
        assert s["image"].std() > 0.2, f"sample {i} is nearly constant"
    assert set(labels) == set(range(len(CLASSES)))
    assert len(CLASSES) >= 8


def test_synthetic_normalisation_matches_generator_statistics():
    ds = SyntheticShapes(200, img_size=32)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    per_channel_mean = x.mean(dim=(0, 2, 3))
    per_channel_std = x.std(dim=(0, 2, 3))
    assert per_channel_mean.abs().max() < 0.25
    assert ((per_channel_std > 0.6) & (per_channel_std < 1.4)).all()


def test_synthetic_transform_receives_pil_image():
    seen = []

    def transform(img):
        seen.append(img)
        return torch.zeros(1)

    s = SyntheticShapes(2, img_size=48, transform=transform)[1]
    assert isinstance(seen[0], Image.Image) and seen[0].size == (48, 48)
    assert seen[0].mode == "RGB"
    assert torch.equal(s["image"], torch.zeros(1))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"split": "val2"}, "val2"), ({"num_samples": 0}, "num_samples"), ({"img_size": 4}, "4")],
)
def test_synthetic_rejects_bad_arguments(kwargs, match):
    args = {"num_samples": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        SyntheticShapes(**args)


def test_synthetic_datamodule_loaders():
    dm = SyntheticImageDataModule(img_size=32, num_train=10, num_val=6, batch_size=4)
    assert dm.num_classes == len(CLASSES)
    assert len(dm.mean) == 3 and len(dm.std) == 3
    assert dm.hparams.batch_size == 4
    train = list(dm.train_dataloader())
    assert len(train) == 2  # drop_last
    assert train[0]["image"].shape == (4, 3, 32, 32)
    assert train[0]["skipped"].tolist() == [0, 0, 0, 0]
    val = list(dm.val_dataloader())
    assert [b["image"].shape[0] for b in val] == [4, 2]
    # val is not shuffled: same order every time
    again = list(dm.val_dataloader())
    assert torch.equal(val[0]["image"], again[0]["image"])


# ----------------------------------------------------------------------------- transforms


def test_transforms_output_size():
    img = _noise_image(0)
    assert mae_train_transform(32)(img).shape == (3, 32, 32)
    ev = eval_transform(32)
    out = ev(img)
    assert out.shape == (3, 32, 32)
    assert torch.equal(out, ev(img))


# ----------------------------------------------------------------------------- ImageFolder


def test_image_folder_dataset_reads_classes(folder: Path):
    ds = ImageFolderDataset(folder, transform=eval_transform(32))
    assert ds.classes == ["cat", "dog"]
    assert ds.num_classes == 2
    assert len(ds) == 6
    samples = [ds[i] for i in range(len(ds))]
    assert [s["label"] for s in samples] == [0, 0, 0, 1, 1, 1]
    assert all(s["image"].shape == (3, 32, 32) for s in samples)
    assert all(s["skipped"] == 0 for s in samples)
    # default transform: ToTensor at native size (H=50, W=40)
    raw = ImageFolderDataset(folder)[0]["image"]
    assert raw.shape == (3, 50, 40)
    assert 0.0 <= raw.min() and raw.max() <= 1.0


def test_image_folder_datamodule_batches(folder: Path):
    dm = ImageFolderDataModule(
        str(folder), img_size=32, batch_size=4, num_workers=0, pin_memory=False
    )
    assert dm.num_classes == 2
    assert dm.mean == IMAGENET_MEAN and dm.std == IMAGENET_STD
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 1  # 6 images, batch 4, drop_last
    b = batches[0]
    assert b["image"].shape == (4, 3, 32, 32)
    assert set(b["label"].tolist()) <= {0, 1}
    assert b["skipped"].tolist() == [0, 0, 0, 0]
    # no val_root: deterministic subset of the train folder in sorted order
    val = list(dm.val_dataloader())
    labels = torch.cat([v["label"] for v in val]).tolist()
    assert labels == [0, 0, 0, 1, 1, 1]
    assert val[0]["image"].shape == (4, 3, 32, 32)
    again = next(iter(dm.val_dataloader()))
    assert torch.equal(val[0]["image"], again["image"])


def test_image_folder_datamodule_val_root(folder: Path, tmp_path: Path):
    val_root = tmp_path / "val"
    _write(val_root / "cat" / "a.png", seed=50)
    _write(val_root / "dog" / "b.png", seed=51)
    dm = ImageFolderDataModule(
        str(folder),
        img_size=32,
        batch_size=4,
        num_workers=0,
        val_root=str(val_root),
        pin_memory=False,
    )
    val = list(dm.val_dataloader())
    assert len(val) == 1 and val[0]["image"].shape == (2, 3, 32, 32)
    assert val[0]["label"].tolist() == [0, 1]


def test_missing_root_names_path(tmp_path: Path, folder: Path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError, match="does not exist") as e:
        ImageFolderDataset(missing)
    assert str(missing) in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        ImageFolderDataModule(str(missing), num_workers=0)
    assert str(missing) in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        ImageFolderDataModule(str(folder), val_root=str(missing))
    assert str(missing) in str(e.value)


def test_empty_root_names_path(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for make in (ImageFolderDataset, ImageFolderDataModule):
        with pytest.raises((FileNotFoundError, ValueError), match="no images") as e:
            make(empty)
        assert str(empty) in str(e.value)


def test_class_folders_without_images_names_path_and_extensions(tmp_path: Path):
    root = tmp_path / "no_images"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "notes.txt").write_text("hello")
    with pytest.raises((FileNotFoundError, ValueError), match="no images") as e:
        ImageFolderDataset(root)
    assert str(root) in str(e.value) and ".jpg" in str(e.value)
    dm = ImageFolderDataModule(str(root), num_workers=0)  # class folder exists ...
    with pytest.raises((FileNotFoundError, ValueError), match="no images"):
        dm.setup("fit")  # ... but listing the files fails before training


# ----------------------------------------------------------------------------- corrupt files


@pytest.fixture(params=["garbage", "truncated"])
def bad_writer(request):
    if request.param == "garbage":
        return lambda p: (
            p.parent.mkdir(parents=True, exist_ok=True),
            p.write_bytes(b"not an image"),
        )
    return _truncated_jpeg


def test_corrupt_file_raises_with_path(tmp_path: Path, bad_writer):
    root = tmp_path / "root"
    _write(root / "a" / "0.png", seed=0)
    bad = root / "a" / "1.jpg"
    bad_writer(bad)
    _write(root / "a" / "2.png", seed=2)
    ds = ImageFolderDataset(root)
    assert ds[0]["skipped"] == 0
    with pytest.raises(CorruptImageError) as e:
        ds[1]
    assert isinstance(e.value, OSError)
    assert str(bad) in str(e.value)


def test_corrupt_file_skipped(tmp_path: Path, bad_writer, caplog):
    root = tmp_path / "root"
    _write(root / "a" / "0.png", seed=0)
    bad = root / "a" / "1.jpg"
    bad_writer(bad)
    _write(root / "a" / "2.png", seed=2)
    ds = ImageFolderDataset(root, transform=eval_transform(32), skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="maskfm.data.images"):
        s = ds[1]
    assert s["skipped"] == 1
    assert s["image"].shape == (3, 32, 32)
    assert torch.equal(s["image"], ds[2]["image"])  # the next decodable file
    assert str(bad) in caplog.text
    total = sum(int(b["skipped"].sum()) for b in DataLoader(ds, batch_size=2))
    assert total == 1


def test_consecutive_corrupt_files_and_wraparound(tmp_path: Path):
    root = tmp_path / "root"
    _write(root / "a" / "0.png", seed=0)
    (root / "a" / "1.jpg").write_bytes(b"not an image")
    _truncated_jpeg(root / "a" / "2.jpg")
    _write(root / "a" / "3.png", seed=3)
    (root / "a" / "4.png").write_bytes(b"\x89PNG garbage")
    ds = ImageFolderDataset(root, transform=eval_transform(32), skip_corrupt=True)
    assert ds[1]["skipped"] == 2
    assert ds[2]["skipped"] == 1
    assert ds[4]["skipped"] == 1  # wraps around to index 0
    assert torch.equal(ds[4]["image"], ds[0]["image"])
    loader = DataLoader(ds, batch_size=2, num_workers=0)
    assert sum(int(b["skipped"].sum()) for b in loader) == 2 + 1 + 1

    dm = ImageFolderDataModule(
        str(root), img_size=32, batch_size=5, num_workers=0, skip_corrupt=True, pin_memory=False
    )
    batch = next(iter(dm.train_dataloader()))
    assert int(batch["skipped"].sum()) == 4


def test_all_corrupt_raises(tmp_path: Path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "0.jpg").write_bytes(b"nope")
    (root / "a" / "1.jpg").write_bytes(b"nope")
    ds = ImageFolderDataset(root, skip_corrupt=True)
    with pytest.raises(CorruptImageError, match="none of the 2 images"):
        ds[0]
