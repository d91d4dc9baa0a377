"""The masker contract shared by every method.

``mask = masker(layout, generator)`` returns a ``(B, N)`` bool tensor, True = hidden.
Every masker hides exactly ``round(ratio * valid_count)`` tokens per sample and never hides
padding. Concrete maskers only say how much each token "wants" to be hidden (a score); the
exact per-sample top-k lives here once, so counts are exact for every masker.
"""

from __future__ import annotations

import torch

from maskfm.errors import UserInputError
from maskfm.masking.layout import TokenLayout


def num_hidden(valid_count: torch.Tensor, ratio: float) -> torch.Tensor:
    """Tokens to hide per sample: ``round(ratio * valid_count)`` (round half to even)."""
    return torch.round(valid_count.to(torch.float64) * ratio).long()


def mask_from_scores(
    scores: torch.Tensor, valid: torch.Tensor, ratio: float, generator: torch.Generator | None = None
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


class Masker:
    """Base class: subclasses set ``supported_kinds`` and implement :meth:`scores`."""

    supported_kinds: tuple[str, ...] = ()
    # Whether hiding every token of a sample means something: not for an encoder of the
    # visible tokens (it would see nothing); yes for MLM, where the other modality remains.
    allows_full_mask: bool = False

    def __init__(self, ratio: float) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
        if ratio == 1.0 and not self.allows_full_mask:
            raise UserInputError(
                f"masking.ratio=1.0: {type(self).__name__} would hide every token and the encoder would "
                "see nothing; use a ratio below 1")
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

    def __call__(self, layout: TokenLayout, generator: torch.Generator | None = None) -> torch.Tensor:
        self.check_layout(layout)
        mask = mask_from_scores(self.scores(layout, generator), layout.valid, self.ratio, generator)
        if not self.allows_full_mask:
            valid = layout.valid.sum(dim=1)
            if bool(((mask.sum(dim=1) == valid) & (valid > 0)).any()):
                raise UserInputError(
                    f"masking.ratio={self.ratio}: round(ratio x {int(valid.min())} tokens) hides every token of a "
                    "sample, so the encoder would see nothing; lower the ratio or use more tokens")
        return mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ratio={self.ratio})"
