"""The real command line: `python -m maskfm.train +experiment=mae` in a subprocess."""

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_MAE, run_train_cli

pytestmark = pytest.mark.slow

# 64 pictures / batch 8 = 8 steps per epoch.
SMALL_RUN = [
    "+experiment=mae",
    *TINY_MAE,
    "data.img_size=32",
    "data.num_train=64",
    "data.num_val=16",
    "data.batch_size=8",
    "optim.warmup_epochs=0.5",
    "callbacks.reconstructions.every_n_steps=4",
    "callbacks.progress.force=lines",
    "callbacks.model_checkpoint.every_n_epochs=1",
    "seed=3",
]


def run_dirs(cwd: Path) -> list[Path]:
    return sorted((cwd / "runs" / "train" / "mae").glob("2*"))


def train_losses(run_dir: Path) -> dict[int, float]:
    """``{step: train/loss}`` from metrics.csv (the last row wins for a repeated step)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return {
            int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")
        }


def train_until_checkpoint_then_kill(args: list[str], cwd: Path, checkpoint: str) -> Path:
    """Start a run and SIGKILL it as soon as ``checkpoint`` exists (a hard crash)."""
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskfm.train", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        found = list(cwd.glob(f"runs/train/mae/*/checkpoints/{checkpoint}"))
        if found:
            proc.kill()
            proc.wait()
            return found[0].parent.parent
        time.sleep(0.02)
    out = proc.communicate()[0].decode()
    pytest.fail(f"{checkpoint} never appeared (rc={proc.returncode}):\n{out[-3000:]}")


def test_train_writes_run_dir_and_resume_continues_exactly(tmp_path):
    args = [
        *SMALL_RUN,
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "+logger.csv.flush_logs_every_n_steps=1",
    ]
    # Uninterrupted: 2 epochs of 8 steps.
    proc = run_train_cli(args, cwd=tmp_path / "a")
    (full,) = run_dirs(tmp_path / "a")
    assert "model" in proc.stdout and "masking" in proc.stdout  # config tree printed
    assert "epoch 2/2 step 8/8" in proc.stdout  # plain progress lines when not a TTY
    assert {p.name for p in (full / "checkpoints").iterdir()} == {
        "last.ckpt",
        "step_000008.ckpt",
        "step_000016.ckpt",
    }
    assert (full / "config.yaml").is_file()
    assert (full / "reconstructions" / "step_000004.png").is_file()
    assert (full / "reconstructions" / "step_000016.png").is_file()
    header = (full / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/recon", "val/loss", "val/recon", "step"} <= set(header)

    # The same run killed hard after its epoch-1 checkpoint, then resumed with ckpt_path=last.
    first = train_until_checkpoint_then_kill(args, tmp_path / "b", "step_000008.ckpt")
    killed = train_losses(first)
    assert (
        torch.load(first / "checkpoints" / "step_000008.ckpt", weights_only=True)["global_step"]
        == 8
    )
    run_train_cli([*args, "ckpt_path=last"], cwd=tmp_path / "b")
    assert run_dirs(tmp_path / "b") == [first]  # the same run continued, no new directory
    ckpt = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 16
    assert ckpt["optimizer_states"][0]["state"] and ckpt["lr_schedulers"][0]["last_epoch"] == 16

    resumed, uninterrupted = train_losses(first), train_losses(full)
    assert sorted(resumed) == sorted(uninterrupted) == list(range(16))  # metrics.csv appended
    # Same seed => the same curve; resuming restores weights, optimiser, schedule and RNG.
    for step in range(16):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-6), step
    for step, loss in killed.items():  # steps the killed run logged before it died
        assert loss == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-6), step


def test_two_runs_started_together_get_two_directories(tmp_path):
    args = [
        sys.executable,
        "-m",
        "maskfm.train",
        *SMALL_RUN,
        "trainer.max_steps=1",
        "logger=none",
        "print_config=false",
    ]
    procs = [
        subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    for p in procs:
        out = p.communicate(timeout=300)[0]
        assert p.returncode == 0, out.decode()[-3000:]
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 2 and all((d / "config.yaml").is_file() for d in dirs)
