"""Uniform random masking (MAE's argsort of noise)."""

from __future__ import annotations

import torch

from maskfm.masking.base import Masker
from maskfm.masking.layout import LAYOUT_KINDS, TokenLayout


class RandomMasker(Masker):
    """Hide a uniformly random subset of each sample's valid tokens.

    As in MAE, per-token noise ``U(0, 1)`` is drawn and sorted; here the highest noise is
    hidden, which is the same distribution as MAE's "keep the lowest".
    """

    supported_kinds = LAYOUT_KINDS

    def scores(self, layout: TokenLayout, generator: torch.Generator | None) -> torch.Tensor:
        return torch.rand(layout.valid.shape, generator=generator, device=layout.device)
