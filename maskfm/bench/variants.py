"""``bench.compare``: each variant benchmarked in its own process, then compared."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from maskfm.bench.environment import command_line


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
        cmd = [
            sys.executable,
            "-m",
            "maskfm.bench",
            *base,
            *extra,
            "bench.compare=null",
            f"hydra.run.dir={run_dir}",
        ]
        print(f"[{name}] {' '.join(cmd[2:])}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"variant {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        r = json.loads((run_dir / "bench.json").read_text())
        results["variants"][name] = {
            "overrides": list(extra),
            "train_step_median_ms": r["train_step"]["median_ms"],
            "samples_per_sec": r["train_step"]["samples_per_sec"],
            "peak_memory_mib": r["peak_memory_mib"],
            "peak_memory_above_start_mib": r.get("peak_memory_above_start_mib"),
            "peak_memory_kind": r["peak_memory_kind"],
            "batch_size": r["batch_size"],
            "other_processes_cpus": r["environment"].get("other_processes_cpus"),
        }
    names = list(results["variants"])
    if len(names) == 2:
        a, b = (results["variants"][n] for n in names)
        mem = (
            "peak_memory_above_start_mib"
            if a["peak_memory_above_start_mib"] is not None
            else "peak_memory_mib"
        )
        results[f"{names[1]}_over_{names[0]}"] = {
            "time": b["train_step_median_ms"] / a["train_step_median_ms"],
            "memory": b[mem] / a[mem],
            "memory_measure": mem,
        }
    path = output_dir / "bench.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    for name, v in results["variants"].items():
        print(
            f"{name:>8}: {v['train_step_median_ms']:.0f} ms/step, {v['samples_per_sec']:.2f} samples/s, "
            f"peak {v['peak_memory_mib']:.0f} MiB ({v['peak_memory_above_start_mib']} above start)"
        )
    for key, ratio in results.items():
        if key.endswith(tuple(f"_over_{n}" for n in names)):
            print(
                f"{key}: {ratio['time']:.2f}x time, {ratio['memory']:.2f}x memory ({ratio['memory_measure']})"
            )
    print(f"Wrote {path}")
    return results
