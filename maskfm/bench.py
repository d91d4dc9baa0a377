"""Benchmark a masked-modeling method: training-step throughput and MAE's encoder saving.

    python -m maskfm.bench +experiment=mae
    python -m maskfm.bench +experiment=mae model.size=small model.patch_size=16 \\
        data.img_size=224 data.batch_size=16 bench.steps=5
    python -m maskfm.bench +experiment=mae bench.device=cuda bench.precision=bf16

It composes the same config as ``maskfm.train`` (``conf/bench.yaml`` extends ``train.yaml``),
builds the real system and datamodule, takes ONE real training batch and times, on it:

* ``train_step``: the method's forward, backward, AdamW step and ``zero_grad``, i.e. what one
  optimisation step costs without Lightning's loop around it -> ``samples_per_sec``.
* ``encoder_fwd_bwd``: the encoder alone, forward + ``sum().backward()``, on the visible
  patches of masks drawn at each ``bench.mask_ratios``; ``mae_speedup`` is the time at ratio
  0.0 divided by the time at ratio 0.75 (MAE's "the encoder only sees 25 %" saving).

Warm-up iterations are not timed; every timed iteration is bracketed by
``torch.cuda.synchronize`` on a GPU. Results are printed as a table and written to
``<paths.output_dir>/bench.json`` (``runs/bench/<run_name>/<timestamp>/`` from the CLI).

``bench(cfg)`` is a plain function (tests call it directly); ``main`` only wraps it in Hydra.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from maskfm.config import CONFIG_DIR
from maskfm.masking import RandomMasker, mask_indices
from maskfm.methods.pretrainer import batch_size_of, param_groups_weight_decay
from maskfm.run_dir import register_resolvers
from maskfm.train import build_system

log = logging.getLogger(__name__)
register_resolvers()

MIB = 1024 * 1024
SPEEDUP_RATIOS = (0.0, 0.75)  # mae_speedup = time(ratio 0.0) / time(ratio 0.75)


# ----------------------------------------------------------------------------- helpers


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


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


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


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / MIB if sys.platform == "darwin" else rss / 1024


class PeakMemory:
    """Peak memory of one section: CUDA ``max_memory_allocated`` (reset at the start) on a GPU,
    else the process's peak RSS, which cannot be reset (so on CPU it is the peak *so far*)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss"

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def read_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MIB
        return peak_rss_mib()


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


class OtherCpuUse:
    """CPUs kept busy by *other* processes between ``start()`` and ``stop()`` (Linux only).

    Machine-wide busy time from ``/proc/stat`` minus this process's own CPU time, divided by
    the wall time: 0.0 means the benchmark had the machine to itself, 1.0 that another
    process kept one core busy on average (CPU timings are then not trustworthy).
    """

    def __init__(self) -> None:
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
            machine = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), machine, usage.ru_utime + usage.ru_stime

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return None
        wall = end[0] - self._start[0]
        other = (end[1] - self._start[1]) - (end[2] - self._start[2])
        return round(max(other, 0.0) / wall, 3)


def hydra_overrides() -> list[str] | None:
    """The command-line overrides of the running Hydra job (None outside ``@hydra.main``)."""
    with contextlib.suppress(Exception):
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    return None


def command_line() -> str:
    """How this process was started, e.g. ``python -m maskfm.bench +experiment=mae``."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).resolve() == Path(__file__).resolve():
        argv[0:1] = ["-m", __name__ if __name__ != "__main__" else "maskfm.bench"]
    return " ".join(["python", *argv])


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- sections


def bench_train_step(system, batch, device, cfg, autocast, warmup, steps, memory) -> dict[str, Any]:
    """Forward of the method + backward + AdamW step + zero_grad."""
    model = system.model
    hp = system.hparams
    batch_size = batch_size_of(batch)
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    groups = param_groups_weight_decay(model, hp.weight_decay, skip)
    ref = hp.lr_reference_batch  # the training rule on one device (0 = absolute lr)
    lr = hp.base_lr * batch_size / ref if ref else hp.base_lr
    optimizer = system.optimizer_factory(groups, lr=lr)
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
        mask_ratio=getattr(getattr(model, "masker", None), "ratio", None),
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
        "mae_speedup_mean": (full["mean_ms"] / masked["mean_ms"]) if speedup is not None else None,
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
        times = time_fn(lambda p=points, g=num_groups, m=group_size: group_points(p, g, m),
                        device, warmup, steps)
        out[f"{num_points}->{num_groups}x{group_size}"] = summarize(times)
    return out


# ----------------------------------------------------------------------------- entry points


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
    return {"samples": samples, "median_ms": median, "mean_ms": statistics.fmean(times) * 1e3,
            "samples_per_sec": 1e3 / median if median > 0 else None}


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
    batch = to_device(batch, device)

    system = build_system(cfg, datamodule)
    model = system.model.to(device).train()

    results: dict[str, Any] = {
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "device_name": device_name(device),
            "cpu_count": os.cpu_count(),
            "num_threads": torch.get_num_threads(),
            "precision": str(bc.get("precision", 32)),
            "cuda": torch.version.cuda if device.type == "cuda" else None,
            # Other processes on the machine distort CPU timings: check the load was ~0.
            "loadavg_at_start": load_average(),
        },
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
            device, [tuple(c) for c in bc.grouping], int(bc.grouping_batch_size), warmup, steps, seed
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


def print_summary(r: dict[str, Any]) -> None:
    """A readable table of ``bench``'s results."""
    from rich.console import Console
    from rich.table import Table

    env = r["environment"]
    title = (
        f"maskfm bench: {r['method']} ({r['run_name']}), {r['params'] / 1e6:.2f} M params, "
        f"batch {r['batch_size']} x {tuple(r['image_shape'] or ())}"
    )
    table = Table(
        title=title,
        caption=(
            f"{env['device_name']} ({env['device']}, threads={env['num_threads']}), torch {env['torch']}, "
            f"precision {env['precision']}; {r['steps']} timed steps after {r['warmup_steps']} warm-up; "
            f"memory = {r['peak_memory_kind']}; CPUs busy with other processes: "
            f"{env['other_processes_cpus']}"
        ),
    )
    mem_col = "peak RSS MiB" if r["peak_memory_kind"] == "cpu_peak_rss" else "peak CUDA MiB"
    for col in ("section", "tokens", "median ms", "mean ms", "samples/s", mem_col):
        table.add_column(col, justify="left" if col == "section" else "right")
    ts = r["train_step"]
    table.add_row(
        "train step" + (f" @{ts['mask_ratio']:g}" if ts["mask_ratio"] is not None else ""),
        "",
        f"{ts['median_ms']:.2f}",
        f"{ts['mean_ms']:.2f}",
        f"{ts['samples_per_sec']:.1f}",
        f"{ts['peak_memory_mib']:.0f}",
    )
    enc = r.get("encoder_fwd_bwd")
    if enc:
        for ratio, e in enc["ratios"].items():
            table.add_row(
                f"encoder f+b @{ratio}",
                f"{e['visible_tokens']}/{e['total_tokens']}",
                f"{e['median_ms']:.2f}",
                f"{e['mean_ms']:.2f}",
                f"{e['samples_per_sec']:.1f}",
                f"{e['peak_memory_mib']:.0f}",
            )
    if r.get("dataset"):
        d = r["dataset"]
        table.add_row(f"one sample (dataset[i], x{d['samples']})", "", f"{d['median_ms']:.2f}",
                      f"{d['mean_ms']:.2f}", f"{d['samples_per_sec']:.1f}" if d["samples_per_sec"] else "", "")
    grouping = r.get("grouping") or {}
    for case, g in grouping.items():
        if case != "batch_size":
            table.add_row(f"grouping {case} (B={grouping['batch_size']})", "",
                          f"{g['median_ms']:.2f}", f"{g['mean_ms']:.2f}", "", "")
    console = Console()
    console.print(table)
    if enc and enc["mae_speedup"] is not None:
        console.print(
            f"MAE encoder speed-up (ratio 0.0 / ratio 0.75, median): [bold]{enc['mae_speedup']:.2f}x[/bold]"
        )


def bench_variants(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Benchmark each ``bench.compare`` variant in its own process, one after the other.

    Separate processes give each variant its own peak-memory reading (a process's peak RSS
    cannot be reset). ``bench.compare`` maps a variant name to extra overrides, e.g.
    ``{sparse: [model.decoder=sparse], dense: [model.decoder=dense]}``.
    """
    import subprocess

    output_dir = Path(cfg.paths.output_dir)
    base = [o for o in overrides if not o.startswith(("bench.compare", "hydra."))]
    results: dict[str, Any] = {"command": command_line(), "variants": {}}
    for name, extra in cfg.bench.compare.items():
        run_dir = output_dir / name
        cmd = [sys.executable, "-m", "maskfm.bench", *base, *extra, "bench.compare=null",
               f"hydra.run.dir={run_dir}"]
        print(f"[{name}] {' '.join(cmd[2:])}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"variant {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        r = json.loads((run_dir / "bench.json").read_text())
        results["variants"][name] = {
            "overrides": list(extra), "train_step_median_ms": r["train_step"]["median_ms"],
            "samples_per_sec": r["train_step"]["samples_per_sec"], "peak_memory_mib": r["peak_memory_mib"],
            "peak_memory_above_start_mib": r.get("peak_memory_above_start_mib"),
            "peak_memory_kind": r["peak_memory_kind"], "batch_size": r["batch_size"],
            "other_processes_cpus": r["environment"].get("other_processes_cpus"),
        }
    names = list(results["variants"])
    if len(names) == 2:
        a, b = (results["variants"][n] for n in names)
        mem = "peak_memory_above_start_mib" if a["peak_memory_above_start_mib"] is not None else "peak_memory_mib"
        results[f"{names[1]}_over_{names[0]}"] = {
            "time": b["train_step_median_ms"] / a["train_step_median_ms"], "memory": b[mem] / a[mem],
            "memory_measure": mem,
        }
    path = output_dir / "bench.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    for name, v in results["variants"].items():
        print(f"{name:>8}: {v['train_step_median_ms']:.0f} ms/step, {v['samples_per_sec']:.2f} samples/s, "
              f"peak {v['peak_memory_mib']:.0f} MiB ({v['peak_memory_above_start_mib']} above start)")
    for key, ratio in results.items():
        if key.endswith(tuple(f"_over_{n}" for n in names)):
            print(f"{key}: {ratio['time']:.2f}x time, {ratio['memory']:.2f}x memory ({ratio['memory_measure']})")
    print(f"Wrote {path}")
    return results


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="bench")
def main(cfg: DictConfig) -> None:
    if cfg.bench.get("compare"):
        bench_variants(cfg, hydra_overrides() or [])
    else:
        bench(cfg)


if __name__ == "__main__":
    main()
