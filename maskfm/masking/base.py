"""The masker contract shared by every method.

``mask = masker(layout, generator)`` returns a bool tensor of the layout's shape (``(B, N)``
dense, ``(V,)`` ragged; see :class:`TokenLayout`), True = hidden; padding is never hidden.
Each masker declares in ``guarantee`` what it promises about how much it hides:

* ``exact_count``: exactly ``round(ratio * valid tokens)`` per sample (random, block and
  every score-based masker: they only say how much each token "wants" to be hidden, and the
  exact per-sample top-k lives here once);
* ``at_most_count``: at most that many (whole-word masking: words are not split);
* ``exact_sectors``: an exact number of structures (radial: sectors), tokens follow;
* ``expected_ratio``: the ratio holds in expectation only (random keep-draws).

A new masker is one file in ``maskfm/masking/`` (a subclass with ``supported_kinds`` and
``scores``, or ``hide`` for a masker that is not a per-token top-k) plus one
``conf/masking/NAME.yaml``; ragged layouts are handled here, through the dense form.
"""

from __future__ import annotations

import torch

from maskfm.errors import UserInputError
from maskfm.masking.layout import TokenLayout


def num_hidden(valid_count: torch.Tensor, ratio: float) -> torch.Tensor:
    """Tokens to hide per sample: ``round(ratio * valid_count)`` (round half to even)."""
    return torch.round(valid_count.to(torch.float64) * ratio).long()


def mask_from_scores(
    scores: torch.Tensor,
    valid: torch.Tensor,
    ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Hide the ``round(ratio * valid)`` highest-scoring valid tokens of each sample.

    Args:
        scores: ``(B, N)`` float; higher = hidden first. Ties are broken at random.
        valid: ``(B, N)`` bool; invalid tokens are never hidden.
        ratio: fraction of valid tokens to hide, in ``[0, 1]``.
    Returns:
        ``(B, N)`` bool mask, True = hidden.
    """
    if scores.shape != valid.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and valid {tuple(valid.shape)} differ")
    k = num_hidden(valid.sum(dim=1), ratio)  # [B]
    # A tiny random jitter breaks ties without reordering distinct scores.
    jitter = torch.rand(scores.shape, generator=generator, device=scores.device) * 1e-6
    scores = scores.float() + jitter * (scores.abs().amax(dim=1, keepdim=True) + 1.0)
    scores = scores.masked_fill(~valid, float("-inf"))
    order = scores.argsort(dim=1, descending=True)  # [B, N], hidden candidates first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return rank < k[:, None]


EXACT_COUNT = "exact_count"
AT_MOST_COUNT = "at_most_count"
EXACT_SECTORS = "exact_sectors"
EXPECTED_RATIO = "expected_ratio"
GUARANTEES = (EXACT_COUNT, AT_MOST_COUNT, EXACT_SECTORS, EXPECTED_RATIO)


class Masker:
    """Base class: subclasses set ``supported_kinds`` and implement :meth:`scores` (or
    :meth:`hide`)."""

    supported_kinds: tuple[str, ...] = ()
    guarantee: str = EXACT_COUNT
    # Whether hiding every token of a sample means something: not for an encoder of the
    # visible tokens (it would see nothing); yes for MLM, where the other modality remains.
    allows_full_mask: bool = False

    def __init__(self, ratio: float) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
        if ratio == 1.0 and not self.allows_full_mask:
            raise UserInputError(
                f"masking.ratio=1.0: {type(self).__name__} would hide every token and the encoder would "
                "see nothing; use a ratio below 1"
            )
        self.ratio = float(ratio)

    def scores(self, layout: TokenLayout, generator: torch.Generator | None) -> torch.Tensor:
        """``(B, N)`` float scores; the highest are hidden."""
        raise NotImplementedError

    def check_layout(self, layout: TokenLayout) -> None:
        if layout.kind not in self.supported_kinds:
            raise ValueError(
                f"{type(self).__name__} cannot mask a {layout.kind!r} layout; "
                f"it supports {list(self.supported_kinds)}"
            )

    def hide(self, layout: TokenLayout, generator: torch.Generator | None) -> torch.Tensor:
        """The mask of a dense layout: per sample, the top ``round(ratio * valid)`` scores."""
        return mask_from_scores(self.scores(layout, generator), layout.valid, self.ratio, generator)

    def __call__(
        self, layout: TokenLayout, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(B, N)`` (dense) or ``(V,)`` (ragged) bool mask, True = hidden."""
        self.check_layout(layout)
        if layout.is_ragged and not self.takes_ragged:
            dense, slot = layout.padded()
            mask = self.hide(dense, generator)[layout.batch_index, slot]
        else:
            mask = self.hide(layout, generator)
        if (
            not self.allows_full_mask and not layout.is_ragged
        ):  # ragged: the method checks the batch
            valid, hidden = layout.counts(), layout.counts(mask)
            full = (hidden == valid) & (valid > 0)
            if bool(full.any()):
                n = int(valid[full].min())
                how = (
                    f"round(ratio x {n} tokens)"
                    if self.guarantee == EXACT_COUNT
                    else f"{type(self).__name__} on a sample of {n} tokens"
                )
                raise UserInputError(
                    f"masking.ratio={self.ratio}: {how} hides every token of a sample, so the encoder would "
                    "see nothing; lower the ratio or use more tokens"
                )
        return mask

    takes_ragged: bool = False  # True: hide() handles ragged layouts itself (radial)

    def guarantee_for(self, layout: TokenLayout) -> str:
        """What this masker promises on ``layout`` (one of ``GUARANTEES``); a layout with
        ``equal_counts`` always gets ``exact_count``."""
        return self.guarantee

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ratio={self.ratio})"
