"""Maskers (which tokens to hide) and the helpers that split tokens by a mask."""

from maskfm.masking.base import Masker, mask_from_scores, num_hidden
from maskfm.masking.block import BlockMasker
from maskfm.masking.layout import GRID_2D, POINTS_3D, SEQUENCE, TokenLayout
from maskfm.masking.ops import (
    MaskIndices,
    gather_tokens,
    mask_indices,
    restore_order,
    scatter_tokens,
)
from maskfm.masking.radial import RadialMasker, radial_mask
from maskfm.masking.random import RandomMasker
from maskfm.masking.text import WholeWordMasker, mlm_corrupt, whole_word_mask

__all__ = [
    "GRID_2D",
    "POINTS_3D",
    "SEQUENCE",
    "BlockMasker",
    "MaskIndices",
    "Masker",
    "RadialMasker",
    "RandomMasker",
    "TokenLayout",
    "WholeWordMasker",
    "gather_tokens",
    "mask_from_scores",
    "mask_indices",
    "mlm_corrupt",
    "num_hidden",
    "radial_mask",
    "restore_order",
    "scatter_tokens",
    "whole_word_mask",
]
