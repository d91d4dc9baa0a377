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

The package: ``run`` (``bench``), ``sections`` (what is timed), ``timing``, ``environment``
(machine, load, memory, command line), ``report`` (the table), ``variants`` (``bench.compare``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from maskfm.bench.environment import hydra_overrides
from maskfm.bench.report import print_summary
from maskfm.bench.run import bench, resize_batch
from maskfm.bench.sections import bench_dataset, bench_encoder, bench_grouping, bench_train_step
from maskfm.bench.timing import summarize, time_fn
from maskfm.bench.variants import bench_variants
from maskfm.config import CONFIG_DIR
from maskfm.run_dir import register_resolvers

register_resolvers()

__all__ = [
    "bench",
    "bench_dataset",
    "bench_encoder",
    "bench_grouping",
    "bench_train_step",
    "bench_variants",
    "main",
    "print_summary",
    "resize_batch",
    "summarize",
    "time_fn",
]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="bench")
def main(cfg: DictConfig) -> None:
    if cfg.bench.get("compare"):
        bench_variants(cfg, hydra_overrides() or [])
    else:
        bench(cfg)
