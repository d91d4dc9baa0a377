"""Co-attention fusion of two token streams (M3AE / METER's ``BertCrossLayer`` stacks).

Each layer updates one stream from its previous output: self-attention, cross-attention to
the **previous** output of the other stream, feed-forward; post-norm residuals as BERT. Two
parallel stacks (one per modality) run in lockstep, so layer ``i`` of both streams reads
layer ``i - 1`` of both.

Dimension letters: B batch, N image tokens, L text tokens, D width.
"""

from __future__ import annotations

import torch
from torch import nn


class CoAttentionLayer(nn.Module):
    """Self-attention -> cross-attention -> feed-forward, each with dropout, residual, LayerNorm."""

    def __init__(
        self, dim: int = 768, num_heads: int = 12, mlp_ratio: float = 4.0, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        other: torch.Tensor,
        x_pad: torch.Tensor | None = None,
        other_pad: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x: (B, N, D)`` attends to itself then to ``other: (B, M, D)``; ``*_pad`` True = padding."""
        h = self.norm1(
            x + self.dropout(self.self_attn(x, x, x, key_padding_mask=x_pad, need_weights=False)[0])
        )
        h = self.norm2(
            h
            + self.dropout(
                self.cross_attn(h, other, other, key_padding_mask=other_pad, need_weights=False)[0]
            )
        )
        return self.norm3(h + self.dropout(self.ffn(h)))


class CoAttentionFusion(nn.Module):
    """``depth`` co-attention layers per modality (M3AE: 6 x 768 wide, 12 heads)."""

    def __init__(
        self,
        dim: int = 768,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.image_layers = nn.ModuleList(
            CoAttentionLayer(dim, num_heads, mlp_ratio, dropout) for _ in range(depth)
        )
        self.text_layers = nn.ModuleList(
            CoAttentionLayer(dim, num_heads, mlp_ratio, dropout) for _ in range(depth)
        )

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        image_pad: torch.Tensor | None = None,
        text_pad: torch.Tensor | None = None,
        num_layers: int | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Returns the outputs of every layer: ``[image after layer 0, ...]``, ``[text after ...]``.

        M3AE's vision decoder reads ``image_outputs[mim_layer - 1]`` (the released code takes
        the image tokens *before* layer index 3 runs, i.e. after layers 0-2, for mim_layer 3).
        ``num_layers`` runs only the first layers (their outputs do not depend on later ones).
        """
        depth = len(self.image_layers)
        num_layers = depth if num_layers is None else num_layers
        if not 1 <= num_layers <= depth:
            raise ValueError(f"num_layers must be in [1, {depth}], got {num_layers}")
        image_outputs, text_outputs = [], []
        layers = zip(self.image_layers[:num_layers], self.text_layers[:num_layers], strict=True)
        for image_layer, text_layer in layers:
            image, text = (
                image_layer(image, text, image_pad, text_pad),
                text_layer(text, image, text_pad, image_pad),
            )
            image_outputs.append(image)
            text_outputs.append(text)
        return image_outputs, text_outputs
