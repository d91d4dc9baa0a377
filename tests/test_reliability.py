"""Crashes, kills and NaNs: what is on disk afterwards, and how training continues."""

from __future__ import annotations

import csv
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from maskfm.callbacks import AtomicCheckpointIO
from maskfm.run_dir import latest_checkpoint
from maskfm.train import train
from tests.helpers import TINY_MAE, run_train_cli

# 32 pictures / batch 4 = 8 steps per epoch, a checkpoint per epoch.
TINY_RUN = [
    "+experiment=mae",
    *TINY_MAE,
    "data.img_size=32",
    "data.num_train=32",
    "data.num_val=4",
    "data.batch_size=4",
    "callbacks.reconstructions.every_n_steps=0",
    "callbacks.progress.force=lines",
    "callbacks.model_checkpoint.every_n_epochs=1",
    "trainer.log_every_n_steps=1",
    "print_config=false",
    "seed=5",
]


def logged_steps(run_dir: Path) -> list[tuple[int, float]]:
    """``(step, train/loss)`` rows of metrics.csv, in file order (repeats kept)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [
            (int(r["step"]), float(r["train/loss"]))
            for r in csv.DictReader(f)
            if r.get("train/loss")
        ]


# -- kill -9 -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_mid_interval_then_resume_loses_at_most_one_checkpoint_interval(tmp_path):
    args = [*TINY_RUN, "trainer.max_epochs=2", "+logger.csv.flush_logs_every_n_steps=1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskfm.train", *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline, run_dir, killed_at = time.time() + 240, None, None
    while time.time() < deadline and proc.poll() is None:  # kill once step 10 of 16 is logged
        found = list(tmp_path.glob("runs/train/mae/2*/metrics.csv"))
        steps = (
            [s for s, _ in logged_steps(found[0].parent)]
            if found and found[0].stat().st_size
            else []
        )
        if steps and max(steps) >= 10:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            run_dir, killed_at = found[0].parent, max(steps)
            break
        time.sleep(0.05)
    assert run_dir is not None, f"the run never reached step 10 (rc={proc.poll()})"
    assert killed_at < 15, "killed too late to be mid-interval"
    before = logged_steps(run_dir)

    proc = run_train_cli([*args, "ckpt_path=last"], cwd=tmp_path)
    assert f"Resuming from {run_dir}/checkpoints/" in proc.stdout + proc.stderr
    after = logged_steps(run_dir)[len(before) :]  # the rows the resumed run appended
    first_resumed = after[0][0]
    assert first_resumed == 8  # from the epoch-1 checkpoint: steps 0-7 are not redone
    assert killed_at + 1 - first_resumed <= 8  # lost work: at most one interval (8 steps)
    assert [s for s, _ in after] == list(range(8, 16))
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 16
    redone = dict(after)
    for step, loss in before:  # the steps redone after the kill reproduce the killed run's losses
        if step >= 8:
            assert redone[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    assert Counter(s for s, _ in before + after)[3] == 1


SAVER = textwrap.dedent("""
    import sys, torch
    from maskfm.callbacks import AtomicCheckpointIO
    io, path = AtomicCheckpointIO(), sys.argv[1]
    for step in range(1_000_000):
        weights = torch.full((8_000_000,), float(step))  # 32 MB: each save takes a while
        io.save_checkpoint({"state_dict": {"w": weights}, "global_step": step}, path)
        if step == 0:
            print("saved", flush=True)
""")


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    tmp = path.with_name("last.ckpt.tmp")
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "saved"
        deadline = time.time() + 60
        while not (tmp.exists() and tmp.stat().st_size > 0) and time.time() < deadline:
            pass  # busy-wait: the next save has started writing
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    assert tmp.exists()  # killed mid-write, and the partial file is left where it was written
    ckpt = torch.load(path, weights_only=True)
    assert bool((ckpt["state_dict"]["w"] == ckpt["global_step"]).all())  # one whole checkpoint
    assert latest_checkpoint(tmp_path) == path  # ckpt_path=last never picks the partial file


def test_checkpoints_with_nonfinite_weights_are_refused(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 4}, path)
    with pytest.raises(
        FloatingPointError, match=r"refusing to write last.ckpt: non-finite weights in w \(step 5\)"
    ):
        io.save_checkpoint(
            {"state_dict": {"w": torch.tensor([1.0, float("nan"), 2.0])}, "global_step": 5}, path
        )
    assert io.load_checkpoint(path)["global_step"] == 4


class Unpicklable:  # any class: unpickling it means importing and running code
    pass


def test_checkpoints_load_weights_only_unless_the_caller_trusts_the_file(tmp_path):
    path = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "thing": Unpicklable()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert isinstance(
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)["thing"], Unpicklable
    )


def test_no_torch_load_in_maskfm_unpickles_arbitrary_objects():
    sources = Path(__file__).resolve().parents[1].glob("maskfm/**/*.py")
    calls = [
        (p.name, line.strip())
        for p in sources
        for line in p.read_text().splitlines()
        if "torch.load(" in line
    ]
    assert calls and all("weights_only=True" in line for _, line in calls), calls


# -- NaN / inf ---------------------------------------------------------------------------------
class PoisonBatch(Callback):
    """Test hook: turns the pictures of the batch at ``step`` into NaN, and notes whether
    that step changed the weights."""

    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step, self.rank = step, rank  # rank: poison only that rank's batch (DDP)
        self.weights_before: list[torch.Tensor] | None = None
        self.weights_changed: bool | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            if self.rank is None or trainer.global_rank == self.rank:
                batch["image"].fill_(float("nan"))
            self.weights_before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.weights_before is not None and self.weights_changed is None:
            after = list(pl_module.parameters())
            self.weights_changed = not all(
                torch.equal(a, p) for a, p in zip(self.weights_before, after, strict=True)
            )


NAN_RUN = [
    *TINY_RUN,
    "trainer.max_epochs=2",
    "logger=csv",
    "+logger.csv.flush_logs_every_n_steps=1",
    "+callbacks.poison._target_=tests.test_reliability.PoisonBatch",
    "+callbacks.poison.step=10",
]


def test_nan_loss_stops_with_step_and_parts_and_keeps_the_last_good_checkpoint(
    compose_train, tmp_path
):
    with pytest.raises(
        FloatingPointError, match=r"non-finite training loss nan at global step 10 .*'recon': nan"
    ):
        train(compose_train(NAN_RUN))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 8  # the epoch-1 checkpoint, not overwritten
    assert all(
        bool(torch.isfinite(v).all()) for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def test_skip_nonfinite_skips_and_counts_the_batch(compose_train, tmp_path):
    metrics, objects = train(compose_train([*NAN_RUN, "trainer.skip_nonfinite=true"]))
    trainer = objects["trainer"]
    (poison,) = [
        c for c in trainer.callbacks if type(c).__name__ == "PoisonBatch"
    ]  # imported by Hydra
    assert poison.weights_changed is False  # the NaN batch made no update
    assert trainer.global_step == 16 and objects["system"].skipped_nonfinite == 1
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        skipped = {
            int(r["step"]): float(r["train/skipped_nonfinite"])
            for r in csv.DictReader(f)
            if r.get("train/skipped_nonfinite")
        }
    assert skipped[9] == 0.0 and skipped[10] == 1.0 and skipped[15] == 1.0  # a running count
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
