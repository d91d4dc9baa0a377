"""The caption DataModule: tokenizer, datasets of any registered format (:mod:`.registry`), collate."""

from __future__ import annotations

import os
from collections.abc import Sequence, Sized
from typing import Any, cast

import torch
from lightning.fabric.utilities.data import AttributeDict
from torch.utils.data import Dataset, Subset

from maskfm.data.base import LoaderDataModule
from maskfm.data.caption_scenes import GROUNDED_KINDS
from maskfm.data.captions.common import (
    CLIP_MEAN,
    CLIP_STD,
    SYNTHETIC_MEAN,
    SYNTHETIC_STD,
    _RecordDataset,
    clip_transform,
)
from maskfm.data.captions.registry import CAPTION_DATASETS, CaptionSet
from maskfm.data.captions.tokenizer import load_tokenizer
from maskfm.tokens.text import TextEncoder

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
    return ds if n is None or n >= len(cast(Sized, ds)) else Subset(ds, range(n))


class CaptionDataModule(LoaderDataModule):
    """Image-caption loaders: ``dataset`` = synthetic | arrow | folder, or any other format
    registered with :func:`~maskfm.data.captions.registry.register_caption_dataset`.

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
        fmt = CAPTION_DATASETS[dataset]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        synthetic = fmt.generated
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
            hp = cast(AttributeDict, self.hparams)
            self.train_set = fmt.make(
                CaptionSet("train", root, hp, enc, None, self.img_size, num_train)
            )
            self.val_set = fmt.make(CaptionSet("val", root, hp, enc, None, self.img_size, num_val))
        else:
            if root is None:
                raise ValueError(f"dataset={dataset!r} needs root")
            transform, hp = clip_transform(self.img_size), cast(AttributeDict, self.hparams)
            # a real format's dataset holds records (corpus, source_files, encoder)
            train = fmt.make(CaptionSet(train_split, root, hp, None, transform, self.img_size))
            val = fmt.make(CaptionSet(val_split, root, hp, None, transform, self.img_size))
            train, val = cast(_RecordDataset, train), cast(_RecordDataset, val)
            corpus = train.corpus
            key = "|".join(f"{p}:{os.path.getsize(p)}" for p in train.source_files())
            self.tokenizer = load_tokenizer(
                tokenizer, tokenizer_kind, cache_dir, corpus, corpus_key=key, vocab_size=vocab_size
            )
            train.encoder = val.encoder = TextEncoder(self.tokenizer, self.max_text_len)
            self.train_set, self.val_set = _limit(train, num_train), _limit(val, num_val)
        self.vocab_size = len(self.tokenizer)
        self.pad_token_id = self.tokenizer.pad_token_id
        self.mask_token_id = self.tokenizer.mask_token_id

    def setup(self, stage: str | None = None) -> None:  # datasets are built in __init__
        pass

    def model_inputs(self) -> dict[str, Any]:
        """What a text model must know about this tokenizer (passed to its constructor)."""
        return {
            "vocab_size": self.vocab_size,
            "pad_token_id": self.pad_token_id,
            "mask_token_id": self.mask_token_id,
        }

    def eval_dataloaders(self):
        """(train, val) loaders without shuffling or dropping the last batch."""
        assert self.train_set is not None and self.val_set is not None  # built in __init__
        return self.loader(self.train_set, train=False), self.loader(self.val_set, train=False)
