"""``bench(cfg)``: one real training batch, every section timed, ``bench.json`` written."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from maskfm.batch import to_device
from maskfm.bench.environment import (
    OtherCpuUse,
    PeakMemory,
    command_line,
    describe_environment,
    hydra_overrides,
    load_average,
    peak_rss_mib,
)
from maskfm.bench.report import print_summary
from maskfm.bench.sections import bench_dataset, bench_encoder, bench_grouping, bench_train_step
from maskfm.bench.timing import autocast_for, resolve_device
from maskfm.methods.build import build_system


def resize_batch(batch: dict, size: int) -> dict:
    """Repeat or slice every per-sample entry of ``batch`` to ``size`` samples."""
    sizes = {
        len(v) for v in batch.values() if isinstance(v, torch.Tensor | list) and not _is_scalar(v)
    }
    if len(sizes) != 1:
        raise ValueError(f"cannot tell the batch size of a batch with per-key lengths {sizes}")
    n = sizes.pop()
    if n == size:
        return batch
    reps = math.ceil(size / n)
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and not _is_scalar(value):
            out[key] = value.repeat(reps, *([1] * (value.dim() - 1)))[:size]
        elif isinstance(value, list):
            out[key] = (value * reps)[:size]
        else:
            out[key] = value
    return out


def _is_scalar(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 0


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Benchmark ``cfg``'s method on one real batch of ``cfg``'s data; writes ``bench.json``.

    ``bench.threads`` and ``float32_matmul_precision`` are process-wide torch settings; they
    are restored on return so that calling this function leaves the caller's process as it was.
    """
    threads, matmul = torch.get_num_threads(), torch.get_float32_matmul_precision()
    try:
        if cfg.bench.get("threads"):
            torch.set_num_threads(int(cfg.bench.threads))
        if cfg.get("float32_matmul_precision"):
            torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
        return _bench(cfg)
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(matmul)


def _bench(cfg: DictConfig) -> dict[str, Any]:
    bc = cfg.bench
    device = resolve_device(bc.get("device", "auto"))
    autocast = autocast_for(bc.get("precision", 32), device)
    seed = int(cfg.get("seed") or 0)
    torch.manual_seed(seed)
    warmup, steps = int(bc.warmup_steps), int(bc.steps)
    if steps < 1 or warmup < 0:
        raise ValueError(
            f"bench.steps must be >= 1 and bench.warmup_steps >= 0, got {steps}, {warmup}"
        )
    memory = PeakMemory(device)
    other_cpu = OtherCpuUse()
    rss_at_start = peak_rss_mib()

    # One real batch from the real training loader.
    datamodule = instantiate(cfg.data, _convert_="all")
    if hasattr(datamodule, "setup"):
        datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    batch_size = int(bc.batch_size or cfg.data.batch_size)
    if batch_size != int(cfg.data.batch_size):  # the loader's batch is used as is otherwise
        batch = resize_batch(batch, batch_size)
    batch = to_device(batch, device, non_blocking=True)

    system = build_system(cfg, datamodule)
    model = system.model.to(device).train()

    results: dict[str, Any] = {
        "environment": describe_environment(device, bc.get("precision", 32)),
        "command": command_line(),
        "argv": list(sys.argv),
        "overrides": hydra_overrides(),
        "run_name": cfg.get("run_name"),
        "method": type(model).__name__,
        "batch_size": batch_size,
        "image_shape": list(batch["image"].shape[1:]) if "image" in batch else None,
        "params": count_params(model),
        "encoder_params": count_params(model.encoder) if hasattr(model, "encoder") else None,
        "warmup_steps": warmup,
        "steps": steps,
        "peak_memory_kind": memory.kind,
        "peak_rss_at_start_mib": rss_at_start,
        "config": {
            k: OmegaConf.to_container(cfg[k], resolve=True)
            for k in ("data", "model", "masking", "optim", "bench")
            if k in cfg
        },
    }

    other_cpu.start()
    if bc.get("dataset_samples") and getattr(datamodule, "train_set", None) is not None:
        results["dataset"] = bench_dataset(datamodule.train_set, int(bc.dataset_samples), warmup)
    results["train_step"] = bench_train_step(
        system, batch, device, cfg, autocast, warmup, steps, memory
    )

    if hasattr(model, "grouper") and bc.get("grouping"):
        results["grouping"] = bench_grouping(
            device,
            [tuple(c) for c in bc.grouping],
            int(bc.grouping_batch_size),
            warmup,
            steps,
            seed,
        )

    if hasattr(model, "encoder") and hasattr(model, "layout") and "image" in batch:
        results["encoder_fwd_bwd"] = bench_encoder(
            model,
            batch["image"],
            device,
            list(bc.mask_ratios),
            autocast,
            warmup,
            steps,
            memory,
            seed,
        )
    else:
        note = f"{type(model).__name__} has no .encoder/.layout (or the batch no 'image'): encoder section skipped"
        print(note)
        results["encoder_fwd_bwd"] = None
        results["encoder_skipped_reason"] = note

    results["environment"]["loadavg_at_end"] = load_average()
    results["environment"]["other_processes_cpus"] = other_cpu.stop()
    if results["environment"]["other_processes_cpus"] is not None:
        busy = results["environment"]["other_processes_cpus"]
        if device.type == "cpu" and busy > 0.2:
            print(
                f"WARNING: other processes kept {busy:.2f} CPUs busy during the benchmark; "
                "CPU timings are disturbed (re-run on a quiet machine)"
            )
    sections = [results["train_step"]]
    if results["encoder_fwd_bwd"]:
        sections += list(results["encoder_fwd_bwd"]["ratios"].values())
    results["peak_memory_mib"] = max(s["peak_memory_mib"] for s in sections)
    # On CPU the RSS includes the interpreter and every imported library (~1 GiB with
    # torch + lightning); what the model, batch and optimiser add is the rise above the start.
    results["peak_memory_above_start_mib"] = (
        results["peak_memory_mib"] - rss_at_start if memory.kind == "cpu_peak_rss" else None
    )

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "bench.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    results["path"] = str(path)
    print_summary(results)
    print(f"Wrote {path}")
    return results
