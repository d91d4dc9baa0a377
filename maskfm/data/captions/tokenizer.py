"""The caption tokenizer: a local pretrained one, or one trained (:func:`maskfm.tokens.text.train_tokenizer`)
on the captions on first use and cached."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from maskfm.data.caption_scenes import sample_scene
from maskfm.tokens.text import SPECIALS, train_tokenizer

log = logging.getLogger(__name__)

__all__ = ["SPECIALS", "TOKENIZER_VERSION", "load_tokenizer", "synthetic_corpus", "train_tokenizer"]

TOKENIZER_VERSION = 1  # bump when the generator or the tokenizer recipe changes


def synthetic_corpus(n: int = 20000, seed: int = 1234) -> list[str]:
    """Captions of the generator (no rendering), the default tokenizer training corpus."""
    return [sample_scene(np.random.default_rng([seed, 9, i])).caption for i in range(n)]


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
            raise ValueError(
                f"tokenizer '{tokenizer}' is not a fast tokenizer (word_ids are needed)"
            )
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
