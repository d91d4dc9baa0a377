"""Learning-rate schedules as multiplicative factors for ``LambdaLR`` (stepped per iteration)."""

from __future__ import annotations

import math


def warmup_cosine(
    step: int, warmup_steps: int, total_steps: float, min_ratio: float = 0.0
) -> float:
    """MAE's schedule: linear warm-up from 0, then half-cycle cosine down to ``min_ratio``.

    ``total_steps`` may be ``inf`` (no fixed end): the factor then stays 1 after warm-up.
    """
    if step < warmup_steps:
        return step / warmup_steps
    if not math.isfinite(total_steps) or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_linear(
    step: int, warmup_steps: int, total_steps: float, min_ratio: float = 0.0
) -> float:
    """Linear warm-up from 0, then linear decay to ``min_ratio`` at ``total_steps``.

    M3AE / ViLT use transformers' ``get_polynomial_decay_schedule_with_warmup`` with power 1
    and ``end_lr=0``, which is this with ``min_ratio=0``.
    """
    if step < warmup_steps:
        return step / warmup_steps
    if not math.isfinite(total_steps) or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
