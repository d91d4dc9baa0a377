"""Text tokenizers: train a small BPE / WordPiece tokenizer, and encode a caption to fixed length
(ids, attention mask, word ids and grounded-word spans) with its fast (Rust) backend."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

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
        sep_id, cls_id = tok.token_to_id("</s>"), tok.token_to_id("<s>")
        assert sep_id is not None and cls_id is not None  # special tokens of the trained vocabulary
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", sep_id),
            ("<s>", cls_id),
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
