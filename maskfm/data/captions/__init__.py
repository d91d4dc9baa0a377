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

One module per format (:mod:`.synthetic`, :mod:`.arrow`, :mod:`.folder`), each registering
itself in :mod:`.registry`; the record-dataset base in :mod:`.common`, the tokenizer cache in
:mod:`.tokenizer` (training and encoding live in :mod:`maskfm.tokens.text`), loaders in
:mod:`.datamodule`.
"""

from __future__ import annotations

from maskfm.data.captions.common import (
    CLIP_MEAN,
    CLIP_STD,
    SYNTHETIC_MEAN,
    SYNTHETIC_STD,
    CaptionRecordError,
    clip_transform,
)
from maskfm.data.captions.datamodule import CaptionDataModule, collate_captions
from maskfm.data.captions.registry import CAPTION_DATASETS, CaptionSet, register_caption_dataset
from maskfm.data.captions.tokenizer import (
    SPECIALS,
    TOKENIZER_VERSION,
    load_tokenizer,
    synthetic_corpus,
    train_tokenizer,
)
from maskfm.tokens.text import TextEncoder

# The built-in formats register in import order, the order error messages list them in.
# isort: off
from maskfm.data.captions.synthetic import SyntheticCaptions
from maskfm.data.captions.arrow import ArrowCaptions
from maskfm.data.captions.folder import FolderCaptions
# isort: on

__all__ = [
    "CAPTION_DATASETS",
    "CLIP_MEAN",
    "CLIP_STD",
    "SPECIALS",
    "SYNTHETIC_MEAN",
    "SYNTHETIC_STD",
    "TOKENIZER_VERSION",
    "ArrowCaptions",
    "CaptionDataModule",
    "CaptionRecordError",
    "CaptionSet",
    "FolderCaptions",
    "SyntheticCaptions",
    "TextEncoder",
    "clip_transform",
    "collate_captions",
    "load_tokenizer",
    "register_caption_dataset",
    "synthetic_corpus",
    "train_tokenizer",
]
