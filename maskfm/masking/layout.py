"""Token layouts: what a masker needs to know about a batch of tokens.

Two forms carry the same information:

* **dense**: ``positions (B, N, D)``, ``valid (B, N)``; every sample has N slots, padding is
  invalid. Image patches, text, point patches.
* **ragged**: ``positions (V, D)``, ``valid (V,)`` and ``batch_index (V,)``: a flat list of all
  tokens of the batch, as sparse backbones hold voxels (samples of different sizes, no
  padding). ``padded()`` gives the dense form and the slot of every flat token.

A mask always has the shape of the layout's ``valid``: ``(B, N)`` dense, ``(V,)`` ragged.

Dimension letters used throughout maskfm:
    B: batch size, N: tokens per sample, V: tokens of a ragged batch, D: position
    dimensions, C: channels.
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
        batch_index: ragged form only, ``(V,)`` long sample of each token; then
            ``positions`` is ``(V, D)`` and ``valid`` ``(V,)``.
        ragged_batch_size: ragged form only, the number of samples (some may have no token).
        equal_counts: the consumer batches the visible tokens densely (an encoder of the
            visible tokens only), so every sample with the same number of valid tokens must
            hide the same number: maskers then hide exactly ``round(ratio * valid)``.
    """

    kind: str
    positions: torch.Tensor
    valid: torch.Tensor
    grid_size: tuple[int, int] | None = None
    groups: torch.Tensor | None = None
    batch_index: torch.Tensor | None = None
    ragged_batch_size: int | None = None
    equal_counts: bool = False

    def __post_init__(self) -> None:
        if self.kind not in LAYOUT_KINDS:
            raise ValueError(f"layout kind must be one of {LAYOUT_KINDS}, got {self.kind!r}")
        if self.batch_index is not None:
            self._check_ragged()
            return
        if self.positions.dim() != 3:
            raise ValueError(
                f"positions must be (B, N, D), got shape {tuple(self.positions.shape)}"
            )
        if self.valid.shape != self.positions.shape[:2] or self.valid.dtype != torch.bool:
            raise ValueError(
                f"valid must be a bool tensor of shape {tuple(self.positions.shape[:2])}, "
                f"got {self.valid.dtype} {tuple(self.valid.shape)}"
            )
        if self.kind == GRID_2D and self.grid_size is None:
            raise ValueError("a grid2d layout needs grid_size=(rows, cols)")

    def _check_ragged(self) -> None:
        batch_index = self.ragged_batch_index
        v = self.positions.shape[0]
        if self.positions.dim() != 2:
            raise ValueError(
                f"ragged positions must be (V, D), got shape {tuple(self.positions.shape)}"
            )
        if self.valid.shape != (v,) or self.valid.dtype != torch.bool:
            raise ValueError(
                f"ragged valid must be a bool tensor of shape ({v},), got "
                f"{self.valid.dtype} {tuple(self.valid.shape)}"
            )
        if batch_index.shape != (v,):
            raise ValueError(f"batch_index must have shape ({v},), got {tuple(batch_index.shape)}")
        if self.ragged_batch_size is None or self.kind == GRID_2D or self.groups is not None:
            raise ValueError(
                "a ragged layout needs ragged_batch_size and takes no grid_size or groups"
            )

    @property
    def is_ragged(self) -> bool:
        return self.batch_index is not None

    @property
    def ragged_batch_index(self) -> torch.Tensor:
        """``batch_index`` of a ragged layout; raises on a dense one."""
        if self.batch_index is None:
            raise ValueError("batch_index is only set on ragged layouts")
        return self.batch_index

    @property
    def batch_size(self) -> int:
        if self.is_ragged:
            assert self.ragged_batch_size is not None, (
                "a ragged layout has ragged_batch_size (checked at init)"
            )
            return self.ragged_batch_size
        return self.positions.shape[0]

    @property
    def num_tokens(self) -> int:
        """Slots per sample (dense) or tokens of the whole batch (ragged)."""
        return self.positions.shape[0] if self.is_ragged else self.positions.shape[1]

    def counts(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B,)`` valid tokens per sample, or with ``mask`` the valid tokens it selects."""
        selected = self.valid if mask is None else self.valid & mask
        if not self.is_ragged:
            return selected.sum(dim=1)
        return torch.bincount(self.ragged_batch_index[selected], minlength=self.batch_size)

    def padded(self) -> tuple[TokenLayout, torch.Tensor]:
        """The dense form of a ragged layout and ``slot (V,)``: token i sits at
        ``[batch_index[i], slot[i]]``, in its sample's original order; the rest is padding."""
        if not self.is_ragged:
            raise ValueError("padded() is for ragged layouts")
        b, (v, d), dev = self.batch_size, self.positions.shape, self.device
        batch_index = self.ragged_batch_index
        order = torch.argsort(batch_index, stable=True)
        per_sample = torch.bincount(batch_index, minlength=b)
        starts = torch.cumsum(per_sample, 0) - per_sample
        slot = torch.empty(v, dtype=torch.long, device=dev)
        slot[order] = torch.arange(v, device=dev) - starts[batch_index[order]]
        n = int(per_sample.max()) if v else 0
        positions = self.positions.new_zeros(b, n, d)
        positions[batch_index, slot] = self.positions
        valid = torch.zeros(b, n, dtype=torch.bool, device=dev)
        valid[batch_index, slot] = self.valid
        return TokenLayout(self.kind, positions, valid), slot

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
        return cls(GRID_2D, pos, valid, grid_size=(rows, cols), equal_counts=True)

    @classmethod
    def points(
        cls, centers: torch.Tensor, valid: torch.Tensor | None = None, equal_counts: bool = False
    ) -> TokenLayout:
        """Layout of 3D tokens at ``centers: (B, N, 3)``."""
        if valid is None:
            valid = torch.ones(centers.shape[:2], dtype=torch.bool, device=centers.device)
        return cls(POINTS_3D, centers.float(), valid, equal_counts=equal_counts)

    @classmethod
    def ragged(
        cls,
        positions: torch.Tensor,
        batch_index: torch.Tensor,
        batch_size: int,
        kind: str = POINTS_3D,
        valid: torch.Tensor | None = None,
    ) -> TokenLayout:
        """Ragged layout of a flat token list (e.g. voxels): ``positions (V, D)``,
        ``batch_index (V,)`` in ``[0, batch_size)``."""
        if valid is None:
            valid = torch.ones(positions.shape[0], dtype=torch.bool, device=positions.device)
        return cls(
            kind,
            positions.float(),
            valid,
            batch_index=batch_index.long(),
            ragged_batch_size=int(batch_size),
        )

    @classmethod
    def sequence(cls, valid: torch.Tensor, word_ids: torch.Tensor | None = None) -> TokenLayout:
        """Layout of a token sequence; ``valid: (B, N)`` is False at padding/special tokens.

        ``word_ids: (B, N)`` (a fast tokenizer's ``word_ids()``, -1 for special/padding tokens)
        groups sub-tokens into words for whole-word masking.
        """
        b, n = valid.shape
        pos = torch.arange(n, device=valid.device, dtype=torch.float32).view(1, n, 1)
        return cls(SEQUENCE, pos.expand(b, -1, -1), valid, groups=word_ids)
