"""The caption format "folder": ``<root>/<split>.jsonl`` or ``.csv`` of image paths and captions."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from PIL import Image

from maskfm.data.captions.common import (
    CaptionRecordError,
    Transform,
    _check_caption,
    _decode,
    _RecordDataset,
)
from maskfm.data.captions.registry import CaptionSet, register_caption_dataset
from maskfm.tokens.text import TextEncoder


def _read_utf8(path: Path) -> str:
    """The file as text; invalid UTF-8 is named with its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CaptionRecordError(
            f"{path} line {line}: not valid UTF-8 ({e.reason} at byte {e.start})"
        ) from e


class FolderCaptions(_RecordDataset):
    """``<split>.jsonl`` / ``.csv`` with ``image`` (relative to ``image_dir``) and
    ``caption`` (a string; in JSONL also a list of strings, one sample each)."""

    def __init__(
        self,
        captions_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        encoder: TextEncoder | None,
        transform: Transform | None = None,
        skip_corrupt: bool = False,
        root: str | os.PathLike | None = None,
        allow_outside_root: bool = False,
    ) -> None:
        super().__init__(encoder, transform, skip_corrupt)
        self.file, self.image_dir = Path(captions_file), Path(image_dir)
        self.root = Path(root if root is not None else image_dir).resolve()
        self.allow_outside_root = allow_outside_root
        if not self.file.is_file():
            raise FileNotFoundError(f"caption file '{self.file}' does not exist")
        self.records: list[tuple[int, Any, Any]] = []  # (line/row number, image, caption)
        text = _read_utf8(self.file)
        if self.file.suffix == ".csv":
            reader = csv.DictReader(io.StringIO(text, newline=""))
            missing = {"image", "caption"} - set(reader.fieldnames or ())
            if missing:
                raise CaptionRecordError(
                    f"'{self.file}' lacks column(s) {sorted(missing)} (header {reader.fieldnames})"
                )
            start = reader.line_num + 1
            for r in reader:
                if any(
                    "\n" in v for v in r.values() if isinstance(v, str)
                ):  # a quoted field ran over line ends: an unclosed quote merges the rows after it
                    raise CaptionRecordError(
                        f"{self.file} line {start}: a quoted field runs to line {reader.line_num}; an unclosed "
                        "quote? (a caption is one line)"
                    )
                self.records.append((reader.line_num, r["image"], r["caption"]))
                start = reader.line_num + 1
        else:
            for line_no, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CaptionRecordError(f"{self.file} line {line_no}: bad JSON: {e}") from e
                if not isinstance(r, dict) or not {"image", "caption"} <= r.keys():
                    if not skip_corrupt:
                        raise CaptionRecordError(
                            f"{self.file} line {line_no}: needs 'image' and 'caption' keys"
                        )
                    r = {"image": None, "caption": None}  # reported (counted) when read
                caps = r["caption"] if isinstance(r["caption"], list) else [r["caption"]]
                self.records.extend((line_no, r["image"], c) for c in caps or [None])
        if not self.records:
            raise FileNotFoundError(f"no caption records in '{self.file}'")
        self._row_word = "row" if self.file.suffix == ".csv" else "line"

    def __len__(self) -> int:
        return len(self.records)

    def load(self, idx: int) -> tuple[Image.Image, str, str]:
        line, image, caption = self.records[idx]
        where = f"{self.file} {self._row_word} {line} (image {image!r})"
        if image is not None and not isinstance(image, str):
            raise CaptionRecordError(
                f"{where}: 'image' is a {type(image).__name__}, expected a path string"
            )
        if not image:
            raise CaptionRecordError(f"{where}: missing image path")
        caption = _check_caption(caption, where)
        path = self.image_dir / image
        inside = all(
            Path(p).is_relative_to(self.root)
            for p in (os.path.normpath(path.absolute()), path.resolve())
        )
        if not self.allow_outside_root and not inside:  # lexically and after symlinks
            raise CaptionRecordError(
                f"{where}: image path leaves the data root '{self.root}' "
                "(data.allow_outside_root=true allows it)"
            )
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CaptionRecordError(f"{where}: cannot read image file '{path}': {e}") from e
        return _decode(data, where), caption, where

    def source_files(self) -> list[str]:
        return [str(self.file)]

    def corpus(self) -> list[str]:
        return [c for _, _, c in self.records if isinstance(c, str) and c.strip()]


@register_caption_dataset("folder")
def _folder(s: CaptionSet) -> FolderCaptions:
    assert s.root is not None  # the DataModule requires a root for real formats
    hp, base = s.hparams, Path(s.root)
    for ext in (".jsonl", ".csv"):
        if (base / f"{s.split}{ext}").is_file():
            return FolderCaptions(
                base / f"{s.split}{ext}", base / hp.image_dir, s.encoder, s.transform,
                hp.skip_corrupt, root=base, allow_outside_root=hp.allow_outside_root,
            )  # fmt: skip
    raise FileNotFoundError(f"no '{s.split}.jsonl' or '{s.split}.csv' under '{base}'")
