"""A run always leaves its metrics file, with the last step, whatever the logging interval."""

from __future__ import annotations

import csv

import pytest

from maskfm.train import train
from tests.helpers import TINY_MAE

SMALL = [
    "+experiment=mae",
    *TINY_MAE,
    "data.num_train=64",
    "data.num_val=8",
    "data.batch_size=4",
    "trainer.log_every_n_steps=10",
    "callbacks.reconstructions.every_n_steps=0",
]


@pytest.mark.parametrize("steps,logged", [(5, ["4"]), (10, ["9"]), (23, ["9", "19", "22"])])
def test_metrics_csv_holds_the_last_step_once(compose_train, tmp_path, steps, logged):
    train(compose_train([*SMALL, f"trainer.max_steps={steps}"]))
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [r["step"] for r in rows if r.get("train/loss")] == logged
    last = next(r for r in rows if r["step"] == logged[-1] and r.get("train/loss"))
    assert float(last["train/lr"]) > 0 and float(last["train/recon"]) > 0
