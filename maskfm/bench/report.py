"""``print_summary``: ``bench``'s results as a table on the terminal."""

from __future__ import annotations

from typing import Any


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
        table.add_row(
            f"one sample (dataset[i], x{d['samples']})",
            "",
            f"{d['median_ms']:.2f}",
            f"{d['mean_ms']:.2f}",
            f"{d['samples_per_sec']:.1f}" if d["samples_per_sec"] else "",
            "",
        )
    grouping = r.get("grouping") or {}
    for case, g in grouping.items():
        if case != "batch_size":
            table.add_row(
                f"grouping {case} (B={grouping['batch_size']})",
                "",
                f"{g['median_ms']:.2f}",
                f"{g['mean_ms']:.2f}",
                "",
                "",
            )
    console = Console()
    console.print(table)
    if enc and enc["mae_speedup"] is not None:
        console.print(
            f"MAE encoder speed-up (ratio 0.0 / ratio 0.75, median): [bold]{enc['mae_speedup']:.2f}x[/bold]"
        )
