"""What every method's ``forward`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MaskedModelingOutput:
    """Result of one masked-modeling forward pass.

    One rule per field, whatever the token layout (grid, sequence, points, voxels):

    Attributes:
        loss: scalar to minimise (the weighted sum of ``parts``).
        parts: named loss terms for logging, e.g. ``{"recon": ...}``; logged as ``train/<name>``.
        mask: the masker's output, the **layout's shape**, True = hidden: ``(B, N)`` for dense
            layouts (patches, text, point patches), ``(V,)`` for ragged ones (voxels).
        pred: the prediction **at every token**, aligned with ``mask``: ``(*mask.shape, ...)``,
            so ``pred[mask]`` are the hidden tokens' predictions (what the loss scores). A
            decoder that predicts hidden tokens only leaves zeros at visible ones. None when
            the target is not per token (R-MAE: occupancy of the whole voxel grid).
            MAE/M3AE ``(B, L, p*p*C)`` pixels; Point-MAE ``(B, G, M, 3)`` points.
        metrics: named scalars that are logged but not optimised (e.g. ``mlm_acc``).
        extras: anything a visualisation needs (targets, centres), never used by the loop.
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    pred: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
