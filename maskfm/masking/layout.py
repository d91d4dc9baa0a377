"""Token layouts: what a masker needs to know about a batch of tokens.

Dimension letters used throughout maskfm:
    B: batch size, N: tokens per sample, D: position dimensions, C: channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GRID_2D = "grid2d"
POINTS_3D = "points3d"
SEQUENCE = "sequence"
LAYOUT_KINDS = (GRID_2D, POINTS_3D, SEQUENCE)


@dataclass(frozen=True)
class TokenLayout:
    """Where the tokens of a batch sit, and which of them are real.

    Attributes:
        kind: one of ``grid2d`` (image patches), ``points3d`` (point-patch centres, voxels)
            or ``sequence`` (text).
        positions: ``(B, N, D)`` float tensor. ``grid2d``: ``(row, col)`` patch indices;
            ``points3d``: metric ``(x, y, z)``; ``sequence``: ``(index,)``.
        valid: ``(B, N)`` bool tensor, True for real tokens, False for padding.
        grid_size: ``(rows, cols)`` for ``grid2d`` layouts, else None.
        groups: optional ``(B, N)`` long tensor; tokens with the same id in a sample belong to
            one unit that is hidden as a whole (e.g. the sub-tokens of a word); -1 = none.
    """

    kind: str
    positions: torch.Tensor
    valid: torch.Tensor
    grid_size: tuple[int, int] | None = None
    groups: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in LAYOUT_KINDS:
            raise ValueError(f"layout kind must be one of {LAYOUT_KINDS}, got {self.kind!r}")
        if self.positions.dim() != 3:
            raise ValueError(f"positions must be (B, N, D), got shape {tuple(self.positions.shape)}")
        if self.valid.shape != self.positions.shape[:2] or self.valid.dtype != torch.bool:
            raise ValueError(
                f"valid must be a bool tensor of shape {tuple(self.positions.shape[:2])}, "
                f"got {self.valid.dtype} {tuple(self.valid.shape)}"
            )
        if self.kind == GRID_2D and self.grid_size is None:
            raise ValueError("a grid2d layout needs grid_size=(rows, cols)")

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.positions.shape[1]

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @classmethod
    def grid(cls, batch_size: int, rows: int, cols: int, device=None) -> TokenLayout:
        """Layout of a ``rows x cols`` patch grid in row-major order, all tokens valid."""
        r, c = torch.meshgrid(
            torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij"
        )
        pos = torch.stack([r, c], dim=-1).reshape(1, rows * cols, 2).float()
        pos = pos.expand(batch_size, -1, -1)
        valid = torch.ones(batch_size, rows * cols, dtype=torch.bool, device=device)
        return cls(GRID_2D, pos, valid, grid_size=(rows, cols))

    @classmethod
    def points(cls, centers: torch.Tensor, valid: torch.Tensor | None = None) -> TokenLayout:
        """Layout of 3D tokens at ``centers: (B, N, 3)``."""
        if valid is None:
            valid = torch.ones(centers.shape[:2], dtype=torch.bool, device=centers.device)
        return cls(POINTS_3D, centers.float(), valid)

    @classmethod
    def sequence(cls, valid: torch.Tensor, word_ids: torch.Tensor | None = None) -> TokenLayout:
        """Layout of a token sequence; ``valid: (B, N)`` is False at padding/special tokens.

        ``word_ids: (B, N)`` (a fast tokenizer's ``word_ids()``, -1 for special/padding tokens)
        groups sub-tokens into words for whole-word masking.
        """
        b, n = valid.shape
        pos = torch.arange(n, device=valid.device, dtype=torch.float32).view(1, n, 1)
        return cls(SEQUENCE, pos.expand(b, -1, -1), valid, groups=word_ids)
