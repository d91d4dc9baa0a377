"""Bad caption and image data: an error naming the file, record and problem, or a counted skip
with ``skip_corrupt``; never a bare TypeError, a silent merge or a run that trains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskfm.data.captions import CaptionDataModule, CaptionRecordError, FolderCaptions
from maskfm.data.images import ImageFolderDataModule
from tests.helpers import make_image_folder
from tests.test_data_captions import arrow_rows, png, write_arrow


def folder(
    root: Path, records: list[dict], split_files=("train", "val"), image_names=("a.png", "b.png")
) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in image_names:
        (root / "images" / name).write_bytes(png())
    for split in split_files:
        (root / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return root


def module(root: Path, cache: Path, **kw) -> CaptionDataModule:
    return CaptionDataModule(
        dataset="folder",
        root=str(root),
        batch_size=kw.pop("batch_size", 2),
        img_size=32,
        max_text_len=16,
        cache_dir=str(cache),
        **kw,
    )


@pytest.mark.parametrize("image", [3, ["a.png"]])
def test_a_jsonl_image_that_is_not_a_path_is_named_or_skipped(tmp_path, image):
    records = [
        {"image": image, "caption": "bad"},
        {"image": "a.png", "caption": "a red square"},
        {"image": "b.png", "caption": "another square"},
    ]
    root = folder(tmp_path / "d", records)
    dm = module(root, tmp_path / "cache")
    with pytest.raises(
        CaptionRecordError,
        match=rf"train.jsonl line 1 \(image .*\): 'image' is a {type(image).__name__}",
    ):
        dm.train_set[0]
    dm = module(root, tmp_path / "cache", skip_corrupt=True)
    sample = dm.train_set[0]
    assert sample["skipped"] == 1 and sample["caption"] == "a red square"


def test_an_arrow_image_column_of_strings_is_named_or_skipped(tmp_path):
    root = tmp_path / "arrows"
    root.mkdir()
    names = [
        {**row, "image": f"{row['image_id']}.png"} for row in arrow_rows("train")
    ]  # paths, not bytes
    write_arrow(root / "roco_train.arrow", names)
    write_arrow(root / "medicat_train.arrow", arrow_rows("train"))
    for name in ("roco", "medicat"):
        write_arrow(root / f"{name}_val.arrow", arrow_rows("val"))
    common = dict(
        dataset="arrow",
        root=str(root),
        batch_size=1,
        img_size=32,
        max_text_len=16,
        cache_dir=str(tmp_path / "cache"),
    )
    dm = CaptionDataModule(**common)
    with pytest.raises(
        CaptionRecordError,
        match=r"roco_train.arrow row 0 .*the image is a str \('train/a.png'\), "
        r"expected encoded image bytes",
    ):
        dm.train_set[0]
    dm = CaptionDataModule(**common, skip_corrupt=True)
    assert (
        dm.train_set[0]["skipped"] == 3
    )  # roco's row 0 (2 captions) and row 1 (1 caption), counted
    assert "medicat_train.arrow row 0" in dm.train_set[0]["record"]


def test_empty_datasets_are_an_error_at_setup_naming_the_file(tmp_path):
    root = tmp_path / "arrows"
    root.mkdir()
    import pyarrow as pa

    empty = pa.table(
        {"image": pa.array([], pa.binary()), "caption": pa.array([], pa.list_(pa.string()))}
    )
    with (
        pa.OSFile(str(root / "roco_train.arrow"), "wb") as sink,
        pa.RecordBatchFileWriter(sink, empty.schema) as w,
    ):
        w.write_table(empty)
    write_arrow(root / "roco_val.arrow", arrow_rows("val"))
    with pytest.raises(CaptionRecordError, match=r"roco_train.arrow' has no rows"):
        CaptionDataModule(
            dataset="arrow", root=str(root), names=["roco"], cache_dir=str(tmp_path / "c")
        )
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "train.jsonl").write_text("\n\n")
    with pytest.raises(FileNotFoundError, match=r"no caption records in '.*train.jsonl'"):
        FolderCaptions(tmp_path / "f" / "train.jsonl", tmp_path / "f", None)


def test_a_dataset_smaller_than_one_batch_stops_instead_of_training_nothing(tmp_path):
    pictures = make_image_folder(tmp_path / "pictures", per_class=3)  # 6 images
    dm = ImageFolderDataModule(root=str(pictures), img_size=32, batch_size=8, num_workers=0)
    dm.setup("fit")
    with pytest.raises(
        ValueError,
        match=r"pictures: the training set has 6 samples, fewer than one batch "
        r"\(data.batch_size=8\)",
    ):
        dm.train_dataloader()
    dm = ImageFolderDataModule(root=str(pictures), img_size=32, batch_size=6, num_workers=0)
    assert len(dm.train_dataloader()) == 1
    records = [
        {"image": "a.png", "caption": "a red square"},
        {"image": "b.png", "caption": "a red box"},
    ]
    caps = module(folder(tmp_path / "caps", records), tmp_path / "cache", batch_size=4)
    with pytest.raises(ValueError, match=r"caps: the training set has 2 samples"):
        caps.train_dataloader()


def test_invalid_utf8_is_named_with_its_line(tmp_path):
    root = folder(tmp_path / "d", [{"image": "a.png", "caption": "fine"}])
    (root / "train.jsonl").write_bytes(
        b'{"image": "a.png", "caption": "ok"}\n{"image": "b.png", "caption": "caf\xe9"}\n'
    )
    with pytest.raises(CaptionRecordError, match=r"train.jsonl line 2: not valid UTF-8"):
        module(root, tmp_path / "cache")
    (root / "train.jsonl").unlink()
    (root / "train.csv").write_bytes(b"image,caption\na.png,ok\nb.png,\xff\xfe\n")
    with pytest.raises(CaptionRecordError, match=r"train.csv line 3: not valid UTF-8"):
        module(root, tmp_path / "cache")


def test_an_unclosed_csv_quote_is_detected_not_merged(tmp_path):
    root = folder(tmp_path / "d", [{"image": "a.png", "caption": "fine"}], split_files=("val",))
    (root / "train.csv").write_text(
        'image,caption\na.png,"a red square\nb.png,a red box\na.png,a square\n'
    )
    with pytest.raises(
        CaptionRecordError,
        match=r"train.csv line 2: a quoted field runs to line 4; an unclosed quote",
    ):
        module(root, tmp_path / "cache")
    (root / "train.csv").write_text('image,caption\na.png,"a red, square"\n\nb.png,a red box\n')
    ds = FolderCaptions(root / "train.csv", root / "images", None, root=root)
    assert [(line, cap) for line, _, cap in ds.records] == [(2, "a red, square"), (4, "a red box")]


@pytest.mark.parametrize(
    "path", ["../../outside.png", "/etc/hostname", "images/../../../outside.png"]
)
def test_image_paths_stay_inside_the_data_root(tmp_path, path):
    root = folder(tmp_path / "d", [])
    (tmp_path / "outside.png").write_bytes(png())
    records = [{"image": path, "caption": "sneaky"}, {"image": "a.png", "caption": "a red square"}]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    ds = FolderCaptions(root / "train.jsonl", root / "images", None, root=root)
    with pytest.raises(
        CaptionRecordError, match=r"train.jsonl line 1 .*image path leaves the data root"
    ):
        ds[0]
    assert (
        FolderCaptions(root / "train.jsonl", root / "images", None, skip_corrupt=True, root=root)[
            0
        ]["skipped"]
        == 1
    )
    if path == "../../outside.png":  # allowed on request
        allowed = FolderCaptions(
            root / "train.jsonl", root / "images", None, root=root, allow_outside_root=True
        )
        assert allowed[0]["caption"] == "sneaky"
