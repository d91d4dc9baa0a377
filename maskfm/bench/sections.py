"""The timed sections of ``bench``: a training step, the encoder at each mask ratio, point
grouping, and reading one dataset sample."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch

from maskfm.bench.timing import summarize, time_fn
from maskfm.masking import RandomMasker, mask_indices
from maskfm.methods.pretrainer import batch_size_of

SPEEDUP_RATIOS = (0.0, 0.75)  # mae_speedup = time(ratio 0.0) / time(ratio 0.75)


def bench_train_step(system, batch, device, cfg, autocast, warmup, steps, memory) -> dict[str, Any]:
    """Forward of the method + backward + AdamW step + zero_grad."""
    model = system.model
    batch_size = batch_size_of(batch)
    optimizer, lr = system.build_optimizer(
        batch_size
    )  # exactly what training builds, on one device
    generator = torch.Generator(device=device).manual_seed(int(cfg.get("seed") or 0))
    losses: list[torch.Tensor] = []

    def step() -> None:
        with autocast():
            out = model(batch, generator=generator)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.detach())

    memory.reset()
    times = time_fn(step, device, warmup, steps)
    peak = memory.read_mib()
    last_loss = float(losses[-1]) if losses else float("nan")
    if not math.isfinite(last_loss):
        raise FloatingPointError(f"non-finite loss {last_loss} during the benchmark")
    result = summarize(times)
    result.update(
        samples_per_sec=batch_size / (result["median_ms"] / 1000.0),
        samples_per_sec_mean=batch_size / (result["mean_ms"] / 1000.0),
        mask_ratio=getattr(model.masker, "ratio", None),
        lr=lr,
        optimizer=type(optimizer).__name__,
        last_loss=last_loss,
        peak_memory_mib=peak,
    )
    model.zero_grad(set_to_none=True)
    return result  # the optimiser (and its state) is freed with this frame


def bench_encoder(
    model, imgs, device, ratios, autocast, warmup, steps, memory, seed
) -> dict[str, Any]:
    """Encoder forward + ``sum().backward()`` on the visible patches at each mask ratio."""
    encoder = model.encoder
    generator = torch.Generator(device=device).manual_seed(seed)
    layout = model.layout(imgs.shape[0], device)
    per_ratio: dict[str, dict[str, Any]] = {}
    for ratio in ratios:
        mask = RandomMasker(float(ratio))(layout, generator)
        ids_keep = mask_indices(mask).ids_keep

        def fwd_bwd(ids_keep=ids_keep) -> None:
            with autocast():
                out = encoder(imgs, ids_keep)
            out.float().sum().backward()
            encoder.zero_grad(set_to_none=True)

        memory.reset()
        times = time_fn(fwd_bwd, device, warmup, steps)
        entry = summarize(times)
        entry.update(
            visible_tokens=int(ids_keep.shape[1]),
            total_tokens=int(layout.num_tokens),
            samples_per_sec=imgs.shape[0] / (entry["median_ms"] / 1000.0),
            peak_memory_mib=memory.read_mib(),
        )
        per_ratio[f"{float(ratio):g}"] = entry

    speedup = None
    full, masked = (per_ratio.get(f"{r:g}") for r in SPEEDUP_RATIOS)
    if full is not None and masked is not None:
        speedup = full["median_ms"] / masked["median_ms"]
    base = per_ratio.get("0")
    return {
        "ratios": per_ratio,
        "mae_speedup": speedup,
        "mae_speedup_mean": (full["mean_ms"] / masked["mean_ms"]) if full and masked else None,
        "speedup_vs_ratio_0": (
            {k: base["median_ms"] / v["median_ms"] for k, v in per_ratio.items()} if base else None
        ),
    }


def bench_grouping(device, cases, batch_size, warmup, steps, seed) -> dict[str, Any]:
    """FPS + kNN grouping time for ``(points, groups, group_size)`` cases at ``batch_size``."""
    from maskfm.tokens.group import group_points

    generator = torch.Generator(device=device).manual_seed(seed)
    out: dict[str, Any] = {"batch_size": batch_size}
    for num_points, num_groups, group_size in cases:
        points = torch.randn(batch_size, num_points, 3, generator=generator, device=device)
        times = time_fn(
            lambda p=points, g=num_groups, m=group_size: group_points(p, g, m),
            device,
            warmup,
            steps,
        )
        out[f"{num_points}->{num_groups}x{group_size}"] = summarize(times)
    return out


def bench_dataset(dataset, samples: int, warmup: int) -> dict[str, Any]:
    """Time ``dataset[i]`` (reading, decoding, generating one sample; no loader workers):
    the per-sample cost that unit tests must not assert on a shared machine."""
    n = len(dataset)
    for i in range(min(warmup, n)):
        dataset[i]
    times = []
    for i in range(samples):
        t0 = time.perf_counter()
        dataset[(warmup + i) % n]
        times.append(time.perf_counter() - t0)
    median = statistics.median(times) * 1e3
    return {
        "samples": samples,
        "median_ms": median,
        "mean_ms": statistics.fmean(times) * 1e3,
        "samples_per_sec": 1e3 / median if median > 0 else None,
    }
