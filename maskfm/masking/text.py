"""Masked language modeling: which tokens to hide (whole words) and how to corrupt them.

Whole-word masking groups sub-tokens by the **tokenizer's own word ids** (a fast
tokenizer's ``word_ids()``), so it is correct for any tokenizer. The released M3AE used HF's
``DataCollatorForWholeWordMask``, which finds words by BERT's ``##`` continuation prefix:
with RoBERTa's byte-level BPE no sub-token has that prefix, so every sub-token became its own
"word" and the masking was in fact sub-token masking.
"""

from __future__ import annotations

import torch

from maskfm.masking.base import AT_MOST_COUNT, Masker, num_hidden
from maskfm.masking.layout import SEQUENCE, TokenLayout


def whole_word_mask(
    word_ids: torch.Tensor,
    valid: torch.Tensor,
    ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Hide random whole words, up to ``round(ratio * valid tokens)`` tokens per sample.

    Words are visited in a random order and taken whenever they still fit in the budget (as
    HF's whole-word collator: a word that would overshoot is skipped, a later shorter one may
    fit), so a sample never hides more than ``round(ratio * valid)`` tokens.

    Args:
        word_ids: ``(B, N)`` long, word index of each token, -1 where there is none.
        valid: ``(B, N)`` bool; invalid tokens (special, padding) are never hidden.
    Returns:
        ``(B, N)`` bool, True = hidden.
    """
    b, n = word_ids.shape
    dev = word_ids.device
    in_word = valid & (word_ids >= 0)
    ids = torch.where(in_word, word_ids, torch.full_like(word_ids, n)).clamp(max=n)  # n = "no word"
    length = torch.zeros(b, n + 1, dtype=torch.long, device=dev).scatter_add_(
        1, ids, in_word.long()
    )[:, :n]
    budget = num_hidden(valid.sum(dim=1), ratio)  # [B]
    score = torch.rand(b, n, generator=generator, device=dev).masked_fill(length == 0, 2.0)
    order = score.argsort(dim=1)  # random word order, empty word slots last
    sorted_len = length.gather(1, order)
    chosen_sorted = torch.zeros(b, n, dtype=torch.bool, device=dev)
    used = torch.zeros(b, dtype=torch.long, device=dev)
    for k in range(n):  # greedy over words, vectorised over the batch (n = sequence length)
        take = (sorted_len[:, k] > 0) & (used + sorted_len[:, k] <= budget)
        chosen_sorted[:, k] = take
        used += take * sorted_len[:, k]
    chosen = torch.zeros_like(chosen_sorted).scatter_(1, order, chosen_sorted)
    chosen = torch.cat([chosen, torch.zeros(b, 1, dtype=torch.bool, device=dev)], dim=1)
    return chosen.gather(1, ids) & in_word


class WholeWordMasker(Masker):
    """MLM masking over ``sequence`` layouts: whole words by the layout's ``groups`` (word ids);
    each valid token is its own word when the layout has no groups."""

    supported_kinds = (SEQUENCE,)
    guarantee = AT_MOST_COUNT  # a word that would overshoot the budget is skipped
    allows_full_mask = True  # MLM: the picture is still seen

    def hide(self, layout: TokenLayout, generator: torch.Generator | None = None) -> torch.Tensor:
        groups = layout.groups
        if groups is None:
            groups = torch.arange(layout.num_tokens, device=layout.device).expand(
                layout.batch_size, -1
            )
        return whole_word_mask(groups, layout.valid, self.ratio, generator)


def mlm_corrupt(
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
    replace: float = 0.8,
    random: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of hidden tokens: 80 % ``<mask>``, 10 % a random token, 10 % unchanged.

    Returns ``(corrupted input_ids, labels)``; labels are the original ids at hidden tokens and
    -100 (ignored by cross-entropy) elsewhere.
    """
    labels = torch.where(mask, input_ids, torch.full_like(input_ids, -100))
    u = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    to_mask = mask & (u < replace)
    to_random = mask & (u >= replace) & (u < replace + random)
    random_ids = torch.randint(
        vocab_size, input_ids.shape, generator=generator, device=input_ids.device
    )
    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, labels
