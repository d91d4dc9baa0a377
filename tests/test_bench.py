"""Tests for maskfm.bench: the bench config composes and ``bench(cfg)`` writes sane numbers."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from maskfm.bench import bench, resize_batch
from maskfm.config import CONFIG_DIR
from maskfm.run_dir import register_resolvers

# A small MAE that still has enough encoder work for ratio 0.75 to be clearly cheaper than
# ratio 0.0 (64 tokens of 8 px patches at 64 px; 17 vs 65 tokens into the encoder).
TINY = [
    "model.size=tiny",
    "model.depth=2",
    "model.decoder_depth=1",
    "model.decoder_embed_dim=32",
    "model.decoder_num_heads=2",
    "data.batch_size=8",
    "data.num_train=16",
    "data.num_val=8",
    "bench.steps=2",
    "bench.warmup_steps=1",
    "bench.device=cpu",
    "bench.threads=1",  # robust to other processes on a small CI machine; restored afterwards
]


def compose_bench(tmp_path, overrides=()):
    register_resolvers()
    # paths.* use ${hydra:runtime...}, which only exists in a Hydra run: override them.
    paths = [
        f"paths.output_dir={tmp_path}",
        f"paths.log_dir={tmp_path}",
        f"paths.data_dir={tmp_path}",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("bench", overrides=["+experiment=mae", *paths, *TINY, *overrides])


def test_bench_config_extends_train(tmp_path):
    cfg = compose_bench(tmp_path)
    assert cfg.task_name == "bench"
    assert cfg.run_name == "mae"  # the experiment still applies
    assert cfg.model.patch_size == 8 and cfg.data.img_size == 64
    assert list(cfg.bench.mask_ratios) == [0.75, 0.0]
    assert cfg.bench.batch_size is None


def test_bench_writes_json(tmp_path):
    cfg = compose_bench(tmp_path)
    threads_before = torch.get_num_threads()
    result = bench(cfg)

    path = tmp_path / "bench.json"
    assert path.is_file() and result["path"] == str(path)
    saved = json.loads(path.read_text())
    for key in (
        "environment",
        "command",
        "run_name",
        "batch_size",
        "params",
        "train_step",
        "encoder_fwd_bwd",
        "peak_memory_kind",
        "peak_memory_mib",
    ):
        assert key in saved, key
    env = saved["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["num_threads"] == 1
    assert torch.get_num_threads() == threads_before  # bench.threads does not leak
    assert saved["batch_size"] == 8 and saved["run_name"] == "mae" and saved["params"] > 0

    ts = saved["train_step"]
    assert ts["samples_per_sec"] > 0 and len(ts["times_ms"]) == 2
    assert ts["median_ms"] > 0 and ts["mean_ms"] > 0

    enc = saved["encoder_fwd_bwd"]["ratios"]
    assert enc["0.75"]["visible_tokens"] == 16 and enc["0"]["visible_tokens"] == 64
    # Fewer tokens, less work; compared on the fastest run, which other processes disturb least.
    assert enc["0.75"]["min_ms"] < enc["0"]["min_ms"]
    assert saved["encoder_fwd_bwd"]["mae_speedup"] > 1

    assert saved["peak_memory_kind"] == "cpu_peak_rss"
    assert saved["peak_memory_mib"] > 0 and ts["peak_memory_mib"] > 0


def test_bench_batch_size_override(tmp_path):
    cfg = compose_bench(tmp_path, ["bench.batch_size=3", "bench.mask_ratios=[0.5]"])
    result = bench(cfg)
    assert result["batch_size"] == 3
    assert list(result["encoder_fwd_bwd"]["ratios"]) == ["0.5"]
    assert result["encoder_fwd_bwd"]["mae_speedup"] is None  # needs both 0.0 and 0.75


def test_resize_batch_repeats_and_slices():
    batch = {"image": torch.arange(3).view(3, 1).float(), "label": torch.tensor([0, 1, 2])}
    grown = resize_batch(batch, 7)
    assert grown["image"].shape == (7, 1) and grown["label"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert resize_batch(batch, 2)["label"].tolist() == [0, 1]


def test_bf16_needs_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("bf16 is allowed on a GPU")
    cfg = compose_bench(tmp_path, ["bench.precision=bf16"])
    with pytest.raises(ValueError, match="GPU"):
        bench(cfg)


def test_bench_point_method_reports_grouping(compose_train):
    from tests.test_evaluate import TINY_POINTS

    cfg = compose_train(
        [
            *TINY_POINTS,
            "bench.steps=1",
            "bench.warmup_steps=0",
            "bench.grouping=[[256,16,8],[512,32,8]]",
            "bench.grouping_batch_size=2",
        ],
        config_name="bench",
    )
    result = bench(cfg)
    assert set(result["grouping"]) == {"batch_size", "256->16x8", "512->32x8"}
    assert result["grouping"]["512->32x8"]["median_ms"] > 0
    assert result["train_step"]["samples_per_sec"] > 0 and result["encoder_fwd_bwd"] is None


@pytest.mark.slow
def test_bench_compare_runs_each_variant_in_its_own_process(tmp_path):
    import subprocess
    import sys

    from tests.test_evaluate import TINY_POINTS

    out = tmp_path / "cmp"
    args = [
        sys.executable,
        "-m",
        "maskfm.bench",
        *TINY_POINTS,
        "bench.steps=1",
        "bench.warmup_steps=0",
        "bench.grouping=[]",
        "bench.compare={one: ['model.depth=1'], two: ['model.depth=2']}",
        f"hydra.run.dir={out}",
    ]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    assert set(result["variants"]) == {"one", "two"}
    assert (out / "one" / "bench.json").is_file() and (out / "two" / "bench.json").is_file()
    assert result["two_over_one"]["time"] > 0 and result["variants"]["one"]["peak_memory_mib"] > 0


def test_bench_times_one_sample_of_the_dataset(tmp_path):
    """Per-sample data cost lives here, not in unit tests (timings there fail for the wrong reason)."""
    cfg = compose_bench(tmp_path, ["bench.dataset_samples=5"])
    result = bench(cfg)
    d = json.loads((tmp_path / "bench.json").read_text())["dataset"]
    assert d == result["dataset"] and d["samples"] == 5
    assert 0 < d["median_ms"] and d["samples_per_sec"] == pytest.approx(1e3 / d["median_ms"])


def test_to_device_moves_tensors_and_keeps_everything_else():
    from maskfm.batch import to_device

    spans = [[(0, 3, "colour")]]
    batch = {
        "image": torch.zeros(1, 2),
        "caption": ["a red square"],
        "spans": spans,
        "batch_size": 1,
    }
    moved = to_device(batch, torch.device("meta"), non_blocking=True)
    assert (
        moved is not batch
        and moved["image"].device.type == "meta"
        and batch["image"].device.type == "cpu"
    )
    assert (
        moved["caption"] is batch["caption"]
        and moved["spans"] is spans
        and moved["batch_size"] == 1
    )
