"""Timing: the device to time on, bf16 autocast, and timed repetitions of a function."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or null) -> cuda if available else cpu; anything else as given."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(str(name))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"bench.device={name} but CUDA is not available on this machine")
    return device


def autocast_for(
    precision: Any, device: torch.device
) -> Callable[[], contextlib.AbstractContextManager]:
    """A context-manager factory for ``bench.precision``: 32 (none) or bf16 autocast (GPU)."""
    p = str(precision).lower()
    if p in ("32", "32-true", "fp32", "float32"):
        return contextlib.nullcontext
    if p in ("bf16", "bf16-mixed", "bfloat16"):
        if device.type != "cuda":
            raise ValueError(
                f"bench.precision={precision} is only supported on a GPU; use 32 on {device}"
            )
        return lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    raise ValueError(f"bench.precision must be 32 or bf16, got {precision!r}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> list[float]:
    """Milliseconds of each of ``steps`` timed calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def summarize(times_ms: list[float]) -> dict[str, Any]:
    return {
        "median_ms": statistics.median(times_ms),
        "mean_ms": statistics.fmean(times_ms),
        "min_ms": min(times_ms),
        "max_ms": max(times_ms),
        "times_ms": [round(t, 4) for t in times_ms],
    }
