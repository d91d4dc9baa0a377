"""The caption format "arrow": M3AE Arrow IPC files (``<root>/<name>_<split>.arrow``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
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


class ArrowCaptions(_RecordDataset):
    """M3AE Arrow IPC files, memory-mapped; one sample per (image, caption) pair.

    Required columns ``image`` (bytes) and ``caption`` (list[str] or str); ``image_id`` is
    used to name records when present. Missing columns raise at construction.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        encoder: TextEncoder | None,
        transform: Transform | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        super().__init__(encoder, transform, skip_corrupt)
        import pyarrow as pa
        import pyarrow.compute as pc

        self.files = [str(f) for f in files]
        self.index: list[tuple[int, int, int]] = []  # (file, row, caption number)
        for fi, path in enumerate(self.files):
            if not Path(path).is_file():
                raise FileNotFoundError(f"Arrow file '{path}' does not exist")
            table = self._open(path)
            missing = {"image", "caption"} - set(table.column_names)
            if missing:
                raise CaptionRecordError(
                    f"Arrow file '{path}' lacks column(s) {sorted(missing)} "
                    f"(has {table.column_names}; expected image, caption, image_id, split)"
                )
            if table.num_rows == 0:
                raise CaptionRecordError(f"Arrow file '{path}' has no rows")
            caps = table.column("caption")
            if pa.types.is_list(caps.type) or pa.types.is_large_list(caps.type):
                # pyarrow.compute's functions are generated at import: not in its stubs
                value_lengths = pc.list_value_length  # pyright: ignore[reportAttributeAccessIssue]
                lens = value_lengths(caps).fill_null(0).to_pylist()
            else:
                lens = [1] * len(caps)
            for row, n in enumerate(lens):
                # a row with no caption still gets one (bad) sample so that it is reported
                self.index.extend((fi, row, k) for k in range(max(n, 1)))
        self._tables: dict[int, Any] = {}

    @staticmethod
    def _open(path: str):
        import pyarrow as pa

        try:
            return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()
        except (pa.ArrowInvalid, OSError) as e:
            raise CaptionRecordError(f"cannot read Arrow file '{path}': {e}") from e

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tables"] = {}  # reopen (memory-map) in each worker
        return state

    def __len__(self) -> int:
        return len(self.index)

    def load(self, idx: int) -> tuple[Image.Image, str, str]:
        fi, row, k = self.index[idx]
        table = self._tables.get(fi)
        if table is None:
            table = self._tables[fi] = self._open(self.files[fi])
        image_id = (
            table.column("image_id")[row].as_py() if "image_id" in table.column_names else None
        )
        where = f"{self.files[fi]} row {row}" + (f" (image_id {image_id})" if image_id else "")
        caps = table.column("caption")[row].as_py()
        if not isinstance(caps, list):
            caps = [caps]
        caption = _check_caption(caps[k] if k < len(caps) else None, f"{where} caption {k}")
        img = _decode(table.column("image")[row].as_py(), where)
        return img, caption, f"{where} caption {k}"

    def source_files(self) -> list[str]:
        return list(self.files)

    def corpus(self) -> list[str]:
        texts: list[str] = []
        for path in self.files:
            for caps in self._open(path).column("caption").to_pylist():
                caps = caps if isinstance(caps, list) else [caps]
                texts.extend(c for c in caps if isinstance(c, str) and c.strip())
        return texts


@register_caption_dataset("arrow")
def _arrow(s: CaptionSet) -> ArrowCaptions:
    assert s.root is not None  # the DataModule requires a root for real formats
    files = [Path(s.root) / f"{n}_{s.split}.arrow" for n in s.hparams.names]
    return ArrowCaptions(files, s.encoder, s.transform, s.hparams.skip_corrupt)
