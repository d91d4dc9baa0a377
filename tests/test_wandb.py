"""W&B logging (``logger=wandb``), checked in the files of offline runs (``WANDB_MODE=offline``).

An offline run writes ``<run>/wandb/offline-run-<time>-<id>/run-<id>.wandb``: a log of
protobuf records (the run, its config, each history row), which ``wandb sync`` uploads
later. :func:`wandb_records` reads it, so the tests check what was logged, not just bytes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from maskfm import loggers
from tests.helpers import TINY_MAE, run_train_cli

OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def offline_env(tmp_path: Path) -> dict[str, str]:
    """Offline W&B whose caches and staged artifacts stay in the test's directory."""
    return {
        **OFFLINE,
        **{
            var: str(tmp_path / "wandb_home" / sub)
            for var, sub in (
                ("WANDB_DATA_DIR", "data"),
                ("WANDB_CACHE_DIR", "cache"),
                ("WANDB_CONFIG_DIR", "config"),
            )
        },
    }


def wandb_records(path: Path) -> list:
    """The records of a ``run-<id>.wandb`` file (LevelDB-log framing: 32 KiB blocks of
    ``crc32 | length u16 | type u8 | data`` chunks; type 1 = full, 2/3/4 = first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, pos, chunk, records = 32 * 1024, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(pb.Record.FromString(chunk))
            chunk = b""
    return records


class OfflineRun:
    """One ``offline-run-*`` directory: its run record, config, history rows and media."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        (log,) = directory.glob("run-*.wandb")
        records = wandb_records(log)
        (self.run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        self.config = {i.key: json.loads(i.value_json) for i in self.run.config.update}
        self.history = [
            {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in records
            if r.WhichOneof("record_type") == "history"
        ]
        self.artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]

    @property
    def keys(self) -> set[str]:
        return {k for row in self.history for k in row}

    def media(self, kind: str) -> list[Path]:
        return sorted((self.dir / "files" / "media" / kind).rglob("*.*"))


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    return [OfflineRun(d) for d in sorted((run_dir / "wandb").glob("offline-run-*"))]


def only_run_dir(cwd: Path, run_name: str) -> Path:
    (run,) = (cwd / "runs" / "train" / run_name).glob("2*")
    return run


@pytest.mark.slow
def test_offline_mae_run_holds_config_loss_parts_lr_throughput_and_pictures(tmp_path):
    run_train_cli(
        [
            "+experiment=mae",
            *TINY_MAE,
            "data.img_size=32",
            "data.num_train=16",
            "data.num_val=8",
            "data.batch_size=8",
            "trainer.max_epochs=1",
            "trainer.log_every_n_steps=1",
            "callbacks.reconstructions.every_n_steps=1",
            "callbacks.progress.force=lines",
            "print_config=false",
            "logger=wandb",
            "logger.wandb.tags=[cpu,tiny]",
            "logger.wandb.notes=a test run",
        ],
        cwd=tmp_path,
        env=offline_env(tmp_path),
    )
    run_dir = only_run_dir(tmp_path, "mae")
    (run,) = offline_runs(run_dir)
    assert run.run.run_id == (run_dir / "wandb_id.txt").read_text().strip()
    assert (
        run.run.display_name.startswith("mae model.embed_dim=32")
        and "data.num_train=16" in run.run.display_name
    )
    assert "logger" not in run.run.display_name and "print_config" not in run.run.display_name
    assert list(run.run.tags) == ["cpu", "tiny"] and run.run.notes == "a test run"
    # the resolved config of the run directory, as uploaded
    assert run.config["model"]["embed_dim"] == 32 and run.config["run_name"] == "mae"
    assert run.config["paths"]["output_dir"] == str(run_dir)
    # every loss part, lr, throughput, validation, and the pictures as media
    assert {
        "train/loss",
        "train/recon",
        "train/lr",
        "train/samples_per_sec",
        "val/loss",
        "val/recon",
        "trainer/global_step",
    } <= run.keys
    pictures = [
        row for row in run.history if row.get("reconstructions/_type") == "images/separated"
    ]
    assert [row["trainer/global_step"] for row in pictures] == [1, 2]
    assert len(run.media("images")) == 2
    assert (run_dir / "metrics.csv").is_file()  # the CSV logger runs beside W&B


TINY_POINT_MAE = [
    "+experiment=point_mae",
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "model.pointnet_hidden=[16,32,32]",
    "model.num_groups=8",
    "model.group_size=16",
    "data.num_points=256",
    "data.batch_size=4",
    "data.num_train=8",
    "data.num_val=4",
    "trainer.log_every_n_steps=1",
    "callbacks.reconstructions.every_n_steps=2",
    "callbacks.progress.force=lines",
    "print_config=false",
    "logger=wandb",
]


@pytest.mark.slow
def test_point_clouds_are_logged_as_3d_objects_and_a_resumed_run_keeps_its_id(tmp_path):
    run_train_cli(
        [*TINY_POINT_MAE, "trainer.max_epochs=1", "logger.wandb.log_model=all"],
        cwd=tmp_path,
        env=offline_env(tmp_path),
    )  # steps 1-2
    run_dir = only_run_dir(tmp_path, "point_mae")
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    (first,) = offline_runs(run_dir)
    assert first.run.run_id == run_id
    clouds = {
        row["trainer/global_step"]: row
        for row in first.history
        if "reconstructions_3d/input/_type" in row
    }
    assert list(clouds) == [2]
    assert {
        clouds[2][f"reconstructions_3d/{p}/_type"] for p in ("input", "visible", "reconstruction")
    } == {"object3D-file"}
    files = {p.name.split("_")[0]: p for p in first.media("object3D")}
    points = json.loads(files["input"].read_text())
    assert len(points) == 256 and len(points[0]) == 6  # x y z r g b: the whole input cloud
    assert (
        len(json.loads(files["visible"].read_text())) == round(8 * 0.4) * 16
    )  # visible patches only
    # log_model=all: each checkpoint as a model artifact (staged offline, uploaded by wandb sync)
    assert first.artifacts and {a.type for a in first.artifacts} == {"model"}
    assert {a.name for a in first.artifacts} == {f"model-{run_id}"}

    # ckpt_path=last continues in the same directory, and so in the same W&B run.
    run_train_cli(
        [*TINY_POINT_MAE, "trainer.max_epochs=2", "ckpt_path=last"],
        cwd=tmp_path,
        env=offline_env(tmp_path),
    )
    assert only_run_dir(tmp_path, "point_mae") == run_dir
    assert (run_dir / "wandb_id.txt").read_text().strip() == run_id
    first_again, resumed = offline_runs(run_dir)
    assert resumed.run.run_id == run_id
    assert min(row["trainer/global_step"] for row in resumed.history if "train/loss" in row) >= 2


def test_sweep_jobs_are_grouped_and_named_by_their_overrides(tmp_path, monkeypatch):
    sweep = "/x/runs/train/point_cmae/multirun_2026-01-01_00-00-00_000001"
    overrides = [
        "+experiment=point_cmae",
        "masking.ratio=0.7",
        "logger=wandb",
        "hydra.launcher.partition=gpu",
    ]
    monkeypatch.setattr(loggers, "_hydra_job", lambda: (True, sweep, overrides))
    (tmp_path / "config.yaml").write_text("seed: 3\nmodel: {embed_dim: 8}\n")
    logger = loggers.wandb_logger(save_dir=str(tmp_path), name="point_cmae", tags=["sweep"])
    init = logger._wandb_init
    assert init["group"] == "point_cmae/multirun_2026-01-01_00-00-00_000001"
    assert init["name"] == "point_cmae masking.ratio=0.7"
    assert init["config"] == {"seed": 3, "model": {"embed_dim": 8}}
    assert (
        init["id"] == (tmp_path / loggers.WANDB_ID_FILE).read_text().strip()
        and init["resume"] == "allow"
    )
    # The same directory later (a requeued job) gets the same id; an explicit id wins.
    assert loggers.wandb_logger(save_dir=str(tmp_path), name="x")._wandb_init["id"] == init["id"]
    assert loggers.wandb_logger(save_dir=str(tmp_path), id="given")._wandb_init["id"] == "given"


def test_only_rank_zero_creates_the_run_id(tmp_path, monkeypatch):
    monkeypatch.setattr(loggers.rank_zero_only, "rank", 1)
    assert loggers.persistent_run_id(tmp_path) is None
    assert not (tmp_path / loggers.WANDB_ID_FILE).exists()
    monkeypatch.setattr(loggers.rank_zero_only, "rank", 0)
    run_id = loggers.persistent_run_id(tmp_path)
    assert len(run_id) == 8 and run_id.isalnum()
    monkeypatch.setattr(loggers.rank_zero_only, "rank", 1)
    assert loggers.persistent_run_id(tmp_path) == run_id  # other ranks read it once it exists
