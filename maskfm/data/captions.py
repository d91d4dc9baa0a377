"""Image-caption data for masked image + text modelling (M3AE-style).

Three sources, one sample format::

    {"image": FloatTensor (3, S, S), "input_ids": LongTensor (L,), "attention_mask": (L,),
     "word_ids": LongTensor (L,) (-1 for special / padding tokens),
     "grounded": BoolTensor (L,) (tokens of image-grounded words; all False for real data),
     "span_ids": LongTensor (L,) (index into "spans" of the grounded word a token belongs to, or -1),
     "truncated": bool, "skipped": int, "caption": str, "record": str}

* ``SyntheticCaptions``: generated pictures + captions (:mod:`maskfm.data.caption_scenes`).
* ``ArrowCaptions``: M3AE Arrow IPC files (``image`` bytes, ``caption`` list[str],
  ``image_id``, ``split``); one sample per (image, caption) pair.
* ``FolderCaptions``: ``<root>/<split>.jsonl`` or ``.csv`` with ``image`` (path relative to
  the image directory) and ``caption`` columns.

Captions are tokenised with the fast (Rust) backend of a ``PreTrainedTokenizerFast``; by
default a small byte-level BPE trained on first use and cached (:func:`load_tokenizer`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import transforms as T

from maskfm.data.base import LoaderDataModule, load_or_skip
from maskfm.data.caption_scenes import GROUNDED_KINDS, render_scene, sample_scene
from maskfm.errors import UserInputError

log = logging.getLogger(__name__)

SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.25, 0.25, 0.25)
CLIP_MEAN = (0.4815, 0.4578, 0.4082)
CLIP_STD = (0.2686, 0.2613, 0.2758)

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
TOKENIZER_VERSION = 1  # bump when the generator or the tokenizer recipe changes
SPECIALS = {
    "bpe": {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "unk_token": "<unk>",
        "cls_token": "<s>",
        "sep_token": "</s>",
    },
    "wordpiece": {
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "mask_token": "[MASK]",
        "unk_token": "[UNK]",
    },
}
_SPECIAL_ORDER = {
    "bpe": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
}

Transform = Callable[[Image.Image], Any]


class CaptionRecordError(UserInputError):
    """A caption record that cannot be used (bad image, missing file, empty caption...)."""


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------


def synthetic_corpus(n: int = 20000, seed: int = 1234) -> list[str]:
    """Captions of the generator (no rendering), the default tokenizer training corpus."""
    return [sample_scene(np.random.default_rng([seed, 9, i])).caption for i in range(n)]


def train_tokenizer(corpus: Iterable[str], kind: str = "bpe", vocab_size: int = 1000):
    """Train a ``transformers.PreTrainedTokenizerFast`` on ``corpus`` (deterministic).

    ``kind="bpe"``: byte-level BPE as RoBERTa (``<s> </s> <pad> <mask> <unk>``);
    ``kind="wordpiece"``: lower-cased BERT WordPiece (``[CLS] [SEP] [PAD] [MASK] [UNK]``).
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if kind not in SPECIALS:
        raise ValueError(f"tokenizer kind must be one of {sorted(SPECIALS)}, got {kind!r}")
    specials = _SPECIAL_ORDER[kind]
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=2, special_tokens=specials, show_progress=False
        )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    if kind == "bpe":
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", tok.token_to_id("</s>")),
            ("<s>", tok.token_to_id("<s>")),
            trim_offsets=True,
            add_prefix_space=False,
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[
                ("[CLS]", tok.token_to_id("[CLS]")),
                ("[SEP]", tok.token_to_id("[SEP]")),
            ],
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS[kind])


def load_tokenizer(
    tokenizer: str | os.PathLike | None = None,
    kind: str = "bpe",
    cache_dir: str | os.PathLike | None = None,
    corpus: Callable[[], Iterable[str]] | None = None,
    corpus_key: str = "synthetic",
    vocab_size: int = 1000,
):
    """The tokenizer: a local pretrained directory, or a cached one trained on first use.

    ``tokenizer``: a local tokenizer directory or a hub name already in the local Hugging
    Face cache (loaded offline with ``AutoTokenizer``; must be a fast tokenizer). ``None``: train ``kind`` on ``corpus()``
    (default: :func:`synthetic_corpus`) and save it to
    ``<cache_dir>/tokenizer_<kind>_<vocab>_<key>`` (``save_pretrained`` format), or load it
    from there if it exists. Without ``cache_dir`` the tokenizer is trained and not saved.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if tokenizer is not None:
        path = Path(tokenizer).expanduser()
        name = str(path) if path.is_dir() else str(tokenizer)
        try:  # a local directory, or a hub name already in the local Hugging Face cache
            tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError) as e:  # ValueError: not even a valid hub name
            raise FileNotFoundError(
                f"tokenizer '{tokenizer}' is neither a local directory nor in the local Hugging Face "
                "cache (nothing is downloaded; pass a directory saved with save_pretrained, or "
                "tokenizer=null to train one)"
            ) from e
        if not tok.is_fast:
            raise ValueError(f"tokenizer '{tokenizer}' is not a fast tokenizer (word_ids are needed)")
        return tok
    key = hashlib.sha1(f"{TOKENIZER_VERSION}:{corpus_key}".encode()).hexdigest()[:10]
    target = None
    if cache_dir is not None:
        target = Path(cache_dir) / f"tokenizer_{kind}_{vocab_size}_{key}"
        if (target / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(target), local_files_only=True)
    texts = list((corpus or synthetic_corpus)())
    log.info("training a %s tokenizer (vocab %d) on %d captions", kind, vocab_size, len(texts))
    tok = train_tokenizer(texts, kind, vocab_size)
    if target is not None:
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tok.save_pretrained(str(tmp))
        try:
            os.replace(tmp, target)  # atomic publish; a concurrent writer may have won
        except OSError:
            if not (target / "tokenizer.json").is_file():
                raise
    return tok


class TextEncoder:
    """Tokenise one caption to fixed length with the fast backend (picklable for workers).

    Returns ids, attention mask, word ids (-1 for special/padding), per-token grounded flags
    (token overlaps one of the given character spans), the index of that span (``span_ids``,
    -1 for none) and whether the text was truncated.
    """

    def __init__(self, tokenizer, max_len: int) -> None:
        if max_len < 3:
            raise ValueError(f"max_text_len must be >= 3, got {max_len}")
        backend = tokenizer.backend_tokenizer
        # copy through JSON so that the caller's tokenizer keeps its own settings
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.enable_truncation(max_length=max_len)
        self.backend.enable_padding(
            length=max_len, pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token
        )
        self.max_len = max_len

    def __call__(self, text: str, spans: Sequence[tuple[int, int, str]] = ()) -> dict[str, Any]:
        enc = self.backend.encode(text)
        word_ids = [-1 if w is None else w for w in enc.word_ids]
        special = enc.special_tokens_mask
        span_ids = [-1] * self.max_len
        if spans:
            for t, (a, b) in enumerate(enc.offsets):
                if special[t] or b <= a:
                    continue
                span_ids[t] = next((k for k, (s, e, _) in enumerate(spans) if a < e and s < b), -1)
        span_ids_t = torch.tensor(span_ids, dtype=torch.long)
        return {
            "input_ids": torch.tensor(enc.ids, dtype=torch.long),
            "attention_mask": torch.tensor(enc.attention_mask, dtype=torch.long),
            "word_ids": torch.tensor(word_ids, dtype=torch.long),
            "grounded": span_ids_t >= 0,
            "span_ids": span_ids_t,
            "truncated": len(enc.overflowing) > 0,
        }


# --------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------


def clip_transform(img_size: int) -> T.Compose:
    """M3AE "clip" transform: Resize(bicubic) -> CenterCrop -> ToTensor -> CLIP mean/std."""
    return T.Compose(
        [
            T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(img_size),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def _decode(data: bytes | None, where: str) -> Image.Image:
    if data is not None and not isinstance(data, (bytes, bytearray)):
        shown = repr(data)[:60]
        raise CaptionRecordError(f"{where}: the image is a {type(data).__name__} ({shown}), expected encoded image bytes")
    if not data:
        raise CaptionRecordError(f"{where}: image is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise CaptionRecordError(f"{where}: cannot decode image: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------


class SyntheticCaptions(Dataset):
    """Generated pictures and captions; sample ``i`` is a pure function of (seed, split, i).

    Drawn from ``numpy.random.default_rng([seed, split_id, i])``. Besides the common keys a
    sample has ``"spans"``: (start, end, kind) character spans of the grounded words.
    """

    mean = SYNTHETIC_MEAN
    std = SYNTHETIC_STD

    def __init__(
        self,
        num_samples: int,
        encoder: TextEncoder | None,
        img_size: int = 64,
        seed: int = 0,
        split: str = "train",
        grounded_kinds: Sequence[str] = GROUNDED_KINDS,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy SeedSequence), got {seed}")
        bad = set(grounded_kinds) - set(GROUNDED_KINDS)
        if bad:
            raise ValueError(f"unknown grounded kinds {sorted(bad)}; expected {GROUNDED_KINDS}")
        self.num_samples, self.encoder, self.img_size = num_samples, encoder, img_size
        self.seed, self.split, self.grounded_kinds = seed, split, tuple(grounded_kinds)
        self.transform = T.Compose([T.ToTensor(), T.Normalize(SYNTHETIC_MEAN, SYNTHETIC_STD)])

    def __len__(self) -> int:
        return self.num_samples

    def scene(self, idx: int):
        """(Scene, PIL image) of sample ``idx``."""
        if not -self.num_samples <= idx < self.num_samples:
            raise IndexError(f"index {idx} out of range for {self.num_samples} samples")
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], idx % self.num_samples])
        scene = sample_scene(rng)
        return scene, render_scene(scene, rng, self.img_size)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        scene, img = self.scene(idx)
        spans = [s for s in scene.spans if s[2] in self.grounded_kinds]
        out = {
            "image": self.transform(img),
            "caption": scene.caption,
            "spans": spans,
            "record": f"synthetic/{self.split}/{idx}",
            "skipped": 0,
        }
        if self.encoder is not None:
            out.update(self.encoder(scene.caption, spans))
        return out


class _RecordDataset(Dataset):
    """Shared skip/encode logic: subclasses implement ``__len__`` and ``load(i)``
    -> (PIL image, caption, record name), raising CaptionRecordError for bad records."""

    def __init__(
        self, encoder: TextEncoder | None, transform: Transform | None, skip_corrupt: bool
    ) -> None:
        self.encoder = encoder
        self.transform = transform if transform is not None else T.ToTensor()
        self.skip_corrupt = skip_corrupt
        self._bad: set[int] = set()  # per process (each DataLoader worker has its own)
        self.num_truncated = 0  # per process

    def load(self, idx: int) -> tuple[Image.Image, str, str]:  # pragma: no cover
        raise NotImplementedError

    def __getitem__(self, idx: int) -> dict[str, Any]:
        _, (img, caption, record), skipped = load_or_skip(
            idx, len(self), self.load, self._bad, self.skip_corrupt, (CaptionRecordError,),
            "caption records", CaptionRecordError,
        )
        out = {
            "image": self.transform(img),
            "caption": caption,
            "spans": [],
            "record": record,
            "skipped": skipped,
        }
        if self.encoder is not None:
            out.update(self.encoder(caption))
            if out["truncated"]:
                self.num_truncated += 1
                log.debug("%s: caption truncated to %d tokens", record, self.encoder.max_len)
        return out



def _check_caption(caption: Any, where: str) -> str:
    if not isinstance(caption, str) or not caption.strip():
        raise CaptionRecordError(f"{where}: empty or missing caption ({caption!r})")
    return caption


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
                lens = pc.list_value_length(caps).fill_null(0).to_pylist()
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


def _read_utf8(path: Path) -> str:
    """The file as text; invalid UTF-8 is named with its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise CaptionRecordError(f"{path} line {line}: not valid UTF-8 ({e.reason} at byte {e.start})") from e


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
                    f"'{self.file}' lacks column(s) {sorted(missing)} "
                    f"(header {reader.fieldnames})"
                )
            start = reader.line_num + 1
            for r in reader:
                if any("\n" in v for v in r.values() if isinstance(v, str)):  # a quoted field ran over line ends: an unclosed quote merges the rows after it
                    raise CaptionRecordError(
                        f"{self.file} line {start}: a quoted field runs to line {reader.line_num}; an unclosed "
                        "quote? (a caption is one line)")
                self.records.append((reader.line_num, r["image"], r["caption"]))
                start = reader.line_num + 1
        else:
            for line_no, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CaptionRecordError(
                        f"{self.file} line {line_no}: bad JSON: {e}"
                    ) from e
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
            raise CaptionRecordError(f"{where}: 'image' is a {type(image).__name__}, expected a path string")
        if not image:
            raise CaptionRecordError(f"{where}: missing image path")
        caption = _check_caption(caption, where)
        path = self.image_dir / image
        inside = all(Path(p).is_relative_to(self.root) for p in (os.path.normpath(path.absolute()), path.resolve()))
        if not self.allow_outside_root and not inside:  # lexically and after symlinks
            raise CaptionRecordError(f"{where}: image path leaves the data root '{self.root}' "
                                     "(data.allow_outside_root=true allows it)")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CaptionRecordError(f"{where}: cannot read image file '{path}': {e}") from e
        return _decode(data, where), caption, where


# --------------------------------------------------------------------------------------
# Collate + DataModule
# --------------------------------------------------------------------------------------

_STACKED = ("image", "input_ids", "attention_mask", "word_ids", "grounded", "span_ids")


def collate_captions(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; ``truncated`` (B,) bool, ``skipped`` (B,) long; ``caption``,
    ``spans`` and ``record`` stay lists."""
    out: dict[str, Any] = {k: torch.stack([b[k] for b in batch]) for k in _STACKED}
    out["truncated"] = torch.tensor([bool(b["truncated"]) for b in batch], dtype=torch.bool)
    out["skipped"] = torch.tensor([int(b["skipped"]) for b in batch], dtype=torch.long)
    for k in ("caption", "spans", "record"):
        out[k] = [b[k] for b in batch]
    return out


def _limit(ds: Dataset, n: int | None) -> Dataset:
    return ds if n is None or n >= len(ds) else Subset(ds, range(n))


class CaptionDataModule(LoaderDataModule):
    """Image-caption loaders: ``dataset`` = synthetic | arrow | folder.

    * synthetic: generated (``num_train`` / ``num_val`` samples), normalised with (0.5,)*3 /
      (0.25,)*3; ``img_size`` default 64, ``max_text_len`` default 32.
    * arrow: ``<root>/<name>_<split>.arrow`` for ``name`` in ``names`` (M3AE:
      roco, medicat); CLIP transform; ``img_size`` 288, ``max_text_len`` 64.
    * folder: ``<root>/<split>.jsonl`` (or ``.csv``), images under ``<root>/<image_dir>``.

    ``tokenizer``: None = byte-level BPE (or ``tokenizer_kind="wordpiece"``) trained on the
    synthetic captions (synthetic) or on the train captions (arrow/folder), cached in
    ``cache_dir``; or a path to a local pretrained tokenizer directory. ``num_train`` /
    ``num_val`` cap real datasets (None = all). ``batch_size`` is per device.
    """

    collate_fn = staticmethod(collate_captions)

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        img_size: int | None = None,
        max_text_len: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        num_train: int | None = None,
        num_val: int | None = None,
        seed: int = 0,
        tokenizer: str | None = None,
        tokenizer_kind: str = "bpe",
        vocab_size: int = 1000,
        skip_corrupt: bool = False,
        cache_dir: str | None = None,
        names: Sequence[str] = ("roco", "medicat"),
        train_split: str = "train",
        val_split: str = "val",
        image_dir: str = "images",
        grounded_kinds: Sequence[str] = GROUNDED_KINDS,
        pin_memory: bool = False,
        allow_outside_root: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if dataset not in ("synthetic", "arrow", "folder"):
            raise ValueError(f"dataset must be synthetic, arrow or folder, got {dataset!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        synthetic = dataset == "synthetic"
        self.dataset = dataset
        self.img_size = img_size or (64 if synthetic else 288)
        self.max_text_len = max_text_len or (32 if synthetic else 64)
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.mean, self.std = (
            (SYNTHETIC_MEAN, SYNTHETIC_STD) if synthetic else (CLIP_MEAN, CLIP_STD)
        )

        if synthetic:
            num_train, num_val = num_train or 5000, num_val or 500
            if num_train < batch_size:
                raise ValueError(
                    f"num_train={num_train} is smaller than batch_size={batch_size}"
                    "; with drop_last=True the train loader would be empty"
                )
            self.tokenizer = load_tokenizer(
                tokenizer, tokenizer_kind, cache_dir, vocab_size=vocab_size
            )
            enc = TextEncoder(self.tokenizer, self.max_text_len)
            self.train_set = SyntheticCaptions(
                num_train, enc, self.img_size, seed, "train", grounded_kinds
            )
            self.val_set = SyntheticCaptions(
                num_val, enc, self.img_size, seed, "val", grounded_kinds
            )
        else:
            if root is None:
                raise ValueError(f"dataset={dataset!r} needs root")
            transform = clip_transform(self.img_size)
            train = self._real(dataset, root, train_split, None, transform)
            val = self._real(dataset, root, val_split, None, transform)

            def corpus() -> list[str]:
                return _captions_of(train)

            key = "|".join(f"{p}:{os.path.getsize(p)}" for p in _source_files(train))
            self.tokenizer = load_tokenizer(
                tokenizer, tokenizer_kind, cache_dir, corpus, corpus_key=key, vocab_size=vocab_size
            )
            train.encoder = val.encoder = TextEncoder(self.tokenizer, self.max_text_len)
            self.train_set, self.val_set = _limit(train, num_train), _limit(val, num_val)
        self.vocab_size = len(self.tokenizer)
        self.pad_token_id = self.tokenizer.pad_token_id
        self.mask_token_id = self.tokenizer.mask_token_id

    def _real(self, dataset: str, root: str, split: str, enc, transform) -> _RecordDataset:
        hp = self.hparams
        base = Path(root)
        if dataset == "arrow":
            files = [base / f"{n}_{split}.arrow" for n in hp.names]
            return ArrowCaptions(files, enc, transform, hp.skip_corrupt)
        for ext in (".jsonl", ".csv"):
            if (base / f"{split}{ext}").is_file():
                return FolderCaptions(
                    base / f"{split}{ext}", base / hp.image_dir, enc, transform, hp.skip_corrupt,
                    root=base, allow_outside_root=hp.allow_outside_root,
                )
        raise FileNotFoundError(f"no '{split}.jsonl' or '{split}.csv' under '{base}'")

    def setup(self, stage: str | None = None) -> None:  # datasets are built in __init__
        pass

    def model_inputs(self) -> dict[str, int]:
        """What a text model must know about this tokenizer (passed to its constructor)."""
        return {"vocab_size": self.vocab_size, "pad_token_id": self.pad_token_id,
                "mask_token_id": self.mask_token_id}

    def eval_dataloaders(self):
        """(train, val) loaders without shuffling or dropping the last batch."""
        return self.loader(self.train_set, train=False), self.loader(self.val_set, train=False)


def _source_files(ds: _RecordDataset) -> list[str]:
    return list(ds.files) if isinstance(ds, ArrowCaptions) else [str(ds.file)]


def _captions_of(ds: _RecordDataset) -> list[str]:
    """All non-empty training captions (tokenizer corpus), without decoding images."""
    if isinstance(ds, FolderCaptions):
        return [c for _, _, c in ds.records if isinstance(c, str) and c.strip()]
    texts: list[str] = []
    for path in ds.files:
        for caps in ArrowCaptions._open(path).column("caption").to_pylist():
            caps = caps if isinstance(caps, list) else [caps]
            texts.extend(c for c in caps if isinstance(c, str) and c.strip())
    return texts
