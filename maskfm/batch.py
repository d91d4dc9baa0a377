"""Batches: dicts of per-sample tensors and plain values (lists of captions, spans, ints)."""

from __future__ import annotations

import torch


def to_device(batch: dict, device: torch.device | str, non_blocking: bool = False) -> dict:
    """A new dict with every tensor value of ``batch`` moved to ``device``; other values
    (lists, strings, ints; not looked into) are kept as they are."""
    return {
        k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
