"""What every method's ``forward`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MaskedModelingOutput:
    """Result of one masked-modeling forward pass.

    Attributes:
        loss: scalar to minimise (the weighted sum of ``parts``).
        parts: named loss terms for logging, e.g. ``{"recon": ...}``; logged as ``train/<name>``.
        pred: the method's prediction, e.g. ``(B, L, p*p*C)`` pixels for MAE.
        mask: ``(B, L)`` bool, True = hidden.
        metrics: named scalars that are logged but not optimised (e.g. ``mlm_acc``).
        extras: anything a visualisation needs (targets, layouts), never used by the loop.
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    pred: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
