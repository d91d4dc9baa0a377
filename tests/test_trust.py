"""Files are data: nothing read from a checkpoint chooses code, a load that loads too little
fails, and a file that is not a checkpoint ends in one line naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from maskfm.evaluate import evaluate
from maskfm.interop.checkpoint_file import CheckpointFileError
from maskfm.interop.loading import IncompleteLoadError
from maskfm.methods.point_mae import PointMAE
from maskfm.stored_config import (
    ALLOWED_NAMESPACES,
    ALLOWED_TARGETS,
    UntrustedConfigError,
    targets_named_by,
)
from maskfm.train import build_system, train
from tests.test_evaluate import TINY_POINTS
from tests.test_point_methods import original_point_mae_state_dict

REPO = Path(__file__).resolve().parents[1]
EVAL = [*TINY_POINTS, "eval=svm", "data.num_train=16", "data.num_val=8"]


def payload(sentinel: Path) -> dict:
    """What an attacker would store: a config node that, instantiated, creates ``sentinel``."""
    return {"_target_": "os.system", "_args_": [f"touch {sentinel}"]}


def tiny_checkpoint(compose_train, path: Path, stored: dict | None = None, overrides=()) -> Path:
    """A maskfm checkpoint of the tiny Point-MAE as Lightning writes it (weights, optimiser,
    the resolved run config), with ``stored`` merged into its stored config."""
    cfg = compose_train([*TINY_POINTS, *overrides])
    system = build_system(cfg)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    for key, value in (stored or {}).items():
        node = run_config
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    torch.save(
        {
            "state_dict": system.state_dict(),
            "maskfm_config": run_config,
            "optimizer_states": [],
            "global_step": 3,
            "epoch": 0,
            "pytorch-lightning_version": "2.6.6",
        },
        path,
    )
    return path


CRAFTED = [
    "model._target_",
    "model.pointnet",
    "masking._target_",
    "masking.extra",
    "data.transform",
    "optim.optimizer._target_",
    "_target_",
]


@pytest.mark.parametrize("where", CRAFTED)
def test_evaluate_refuses_a_stored_config_that_names_code(compose_train, tmp_path, where):
    sentinel = tmp_path / "PWNED"
    node = payload(sentinel)
    value = node["_target_"] if where.endswith("_target_") else node
    ckpt = tiny_checkpoint(compose_train, tmp_path / "crafted.ckpt", {where: value})
    cfg = compose_train([*EVAL, f"ckpt_path={ckpt}"], config_name="evaluate")
    key = where if where.endswith("_target_") else where + "._target_"
    with pytest.raises(
        UntrustedConfigError, match=rf"crafted.ckpt: stored config key {key} names 'os.system'"
    ):
        evaluate(cfg)
    assert not sentinel.exists()
    # the honour-the-stored-model mode checks the same list before anything is built
    cfg = compose_train([*EVAL, f"ckpt_path={ckpt}", "stored_config=model"], config_name="evaluate")
    with pytest.raises(UntrustedConfigError, match="os.system"):
        evaluate(cfg)
    assert not sentinel.exists()


def test_evaluate_last_and_train_resume_and_slurm_requeue_refuse_it_too(
    compose_train, tmp_path, monkeypatch
):
    sentinel = tmp_path / "PWNED"
    run = tmp_path / "runs" / "train" / "point_mae" / "2026-01-01_00-00-00_000000"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = tiny_checkpoint(
        compose_train, run / "checkpoints" / "last.ckpt", {"model.encoder": payload(sentinel)}
    )
    cfg = compose_train([*EVAL, "ckpt_path=last"], config_name="evaluate")
    with pytest.raises(
        UntrustedConfigError, match=r"last.ckpt: stored config key model.encoder._target_"
    ):
        evaluate(cfg)
    cfg = compose_train([*TINY_POINTS, f"ckpt_path={ckpt}", "logger=none"])
    with pytest.raises(UntrustedConfigError, match="model.encoder._target_"):
        train(cfg)
    # a requeued SLURM job resumes from its own directory's newest checkpoint: checked the same way
    own = tmp_path / "run" / "checkpoints"
    own.mkdir(parents=True)
    (own / "last.ckpt").write_bytes(ckpt.read_bytes())
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(UntrustedConfigError, match="model.encoder._target_"):
        train(compose_train([*TINY_POINTS, "logger=none"]))
    assert not sentinel.exists()


def test_pickled_code_in_any_weight_file_is_refused(compose_train, tmp_path):
    sentinel = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    evil = tmp_path / "pretrain.pth"
    torch.save({"base_model": {"x": Payload()}}, evil)
    cfg = compose_train([*EVAL, f"ckpt_path={evil}"], config_name="evaluate")
    with pytest.raises(
        CheckpointFileError, match=r"pretrain.pth: refused to unpickle: it names posix.system"
    ):
        evaluate(cfg)
    from maskfm.interop import load_point_mae_checkpoint

    with pytest.raises(CheckpointFileError, match="refused to unpickle"):
        load_point_mae_checkpoint(PointMAE(), evil)
    cfg = compose_train([*TINY_POINTS, f"ckpt_path={evil}", "logger=none"])
    with pytest.raises(CheckpointFileError, match="refused to unpickle"):
        train(cfg)
    from maskfm.methods.m3ae import load_image_weights
    from maskfm.nn.vit import ViTEncoder

    with pytest.raises(CheckpointFileError, match="refused to unpickle"):
        load_image_weights(ViTEncoder(32, 8, 3, 32, 1, 2), str(evil))
    assert not sentinel.exists()


def test_stored_values_fill_the_composed_fields_and_are_reported(compose_train, tmp_path, caplog):
    ckpt = tiny_checkpoint(compose_train, tmp_path / "wide.ckpt", overrides=["model.embed_dim=48"])
    cfg = compose_train([*EVAL, f"ckpt_path={ckpt}"], config_name="evaluate")
    assert cfg.model.embed_dim == 32
    result = evaluate(cfg)
    assert (
        result["values_from_checkpoint"] == {"model.embed_dim": 48} and result["feature_dim"] == 96
    )
    assert "model.embed_dim=48" in caplog.text  # the override that does the same by hand
    assert result["required_loaded"] == result["required_tensors"] > 0


def test_a_checkpoint_of_another_method_is_named(compose_train, tmp_path):
    mae = compose_train(
        ["+experiment=mae", "model.embed_dim=32", "model.depth=1", "model.num_heads=2"]
    )
    system = build_system(mae)
    path = tmp_path / "mae.ckpt"
    torch.save(
        {
            "state_dict": system.state_dict(),
            "optimizer_states": [],
            "maskfm_config": OmegaConf.to_container(mae, resolve=True),
        },
        path,
    )
    cfg = compose_train([*EVAL, f"ckpt_path={path}"], config_name="evaluate")
    with pytest.raises(
        ValueError,
        match=r"mae.ckpt: a checkpoint of maskfm.methods.mae.MAE \(run_name 'mae'\), "
        r"but the composed config builds maskfm.methods.point_mae.PointMAE",
    ):
        evaluate(cfg)
    with pytest.raises(ValueError, match="a checkpoint of maskfm.methods.mae.MAE"):
        train(compose_train([*TINY_POINTS, f"ckpt_path={path}", "logger=none"]))
    # without a stored config, the weights themselves say it: nothing of PointMAE loads
    torch.save({"state_dict": system.state_dict()}, path)
    with pytest.raises(
        IncompleteLoadError, match=r"mae.ckpt: loads [0-9] of the model's \d\d 'model' tensors"
    ):
        evaluate(compose_train([*EVAL, f"ckpt_path={path}"], config_name="evaluate"))


def test_a_load_that_loads_too_little_fails_unless_partial_is_allowed(compose_train, tmp_path):
    released = [
        "+experiment=point_mae_shapenet",
        "data=synthetic_shapes",
        "trainer=cpu",
        "eval=svm",
        "data.batch_size=8",
        "data.num_train=16",
        "data.num_val=8",
    ]
    sd = original_point_mae_state_dict(PointMAE())
    decoder_only = {k: v for k, v in sd.items() if "MAE_encoder" not in k}
    path = tmp_path / "pretrain.pth"
    torch.save({"base_model": decoder_only}, path)
    cfg = compose_train([*released, f"ckpt_path={path}"], config_name="evaluate")
    with pytest.raises(
        IncompleteLoadError, match=r"(?s)loads 0 of the model's 156 'encoder' tensors.*MISSING"
    ):
        evaluate(cfg)
    cfg = compose_train(
        [*released, f"ckpt_path={path}", "allow_partial_load=true"], config_name="evaluate"
    )
    result = evaluate(cfg)
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["required_loaded"] == 0 and saved["required_tensors"] == 156
    assert saved["loaded_tensors"] == len(decoder_only) and len(saved["missing"]) == 156 == len(
        result["missing"]
    )
    # an original checkpoint under a method it cannot fit
    mae = ["+experiment=mae", "eval=svm", f"ckpt_path={path}"]
    with pytest.raises(
        ValueError, match="an original Point-MAE checkpoint, but the composed config builds MAE"
    ):
        evaluate(compose_train(mae, config_name="evaluate"))


def make_non_checkpoints(root: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not checkpoints, with what the one-line error must say of each."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.ckpt").write_text("epoch 3 loss 0.1\n")
    (root / "empty.ckpt").write_bytes(b"")
    good = root / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, good)
    (root / "truncated.ckpt").write_bytes(good.read_bytes()[:300])
    with zipfile.ZipFile(root / "archive.ckpt", "w") as z:
        z.writestr("readme.txt", "hello")
    return {
        "text": (root / "notes.ckpt", "not a torch file"),
        "empty": (root / "empty.ckpt", "the file is empty"),
        "truncated": (root / "truncated.ckpt", "a truncated or corrupt zip archive"),
        "zip": (root / "archive.ckpt", "a zip archive without torch's data.pkl"),
    }


@pytest.mark.parametrize("kind", ["text", "empty", "truncated", "zip"])
def test_files_that_are_not_checkpoints_are_named(compose_train, tmp_path, kind):
    path, says = make_non_checkpoints(tmp_path / "files")[kind]
    with pytest.raises(CheckpointFileError, match=rf"{path.name}: {says}"):
        evaluate(compose_train([*EVAL, f"ckpt_path={path}"], config_name="evaluate"))
    with pytest.raises(CheckpointFileError, match=rf"{path.name}: {says}"):
        train(compose_train([*TINY_POINTS, f"ckpt_path={path}", "logger=none"]))


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_the_command_line_prints_one_line(tmp_path, command):
    path, _ = make_non_checkpoints(tmp_path / "files")["truncated"]
    args = [
        sys.executable,
        "-m",
        f"maskfm.{command}",
        *TINY_POINTS,
        f"ckpt_path={path}",
        f"paths.log_dir={tmp_path}/runs",
        "print_config=false",
    ]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {path}: a truncated or corrupt zip archive; expected "
        + (
            "a maskfm training checkpoint (.ckpt)"
            if command == "train"
            else "a maskfm checkpoint (.ckpt), an original MAE or Point-MAE checkpoint (.pth) "
            "or a Hugging Face ViTMAE directory"
        )
    ]
    assert "Traceback" not in proc.stderr


def test_the_allow_list_is_what_our_configs_name_and_only_our_code():
    from hydra._internal.utils import _locate

    assert {"maskfm.methods.mae.MAE", "maskfm.masking.RadialMasker", "torch.optim.AdamW"} <= (
        ALLOWED_TARGETS
    )
    for target in ALLOWED_TARGETS:
        assert target.startswith(ALLOWED_NAMESPACES), target
        assert callable(_locate(target)), target


def test_a_yaml_added_to_conf_extends_the_allow_list(tmp_path):
    (tmp_path / "masking").mkdir()
    (tmp_path / "masking" / "mine.yaml").write_text(
        "_target_: maskfm.masking.RandomMasker\nnested:\n  - _target_: maskfm.x.Y\n"
    )
    assert targets_named_by(tmp_path) == {"maskfm.masking.RandomMasker", "maskfm.x.Y"}


def test_interpolations_and_objects_in_stored_configs_are_refused():
    from maskfm.stored_config import check_stored_config

    with pytest.raises(
        UntrustedConfigError, match=r"f.ckpt: stored config key model.size holds an interpolation"
    ):
        check_stored_config({"model": {"size": "${oc.env:HOME}"}}, "f.ckpt")
    with pytest.raises(UntrustedConfigError, match=r"key model._target_.x"):
        check_stored_config({"model": {"_target_": {"x": "maskfm.methods.mae.MAE"}}}, "f.ckpt")
    # callbacks and loggers are never read back: a user's own callback does not block a resume
    assert check_stored_config({"callbacks": {"mine": {"_target_": "my.Callback"}}}, "f.ckpt") == {}


def write_text_encoder(directory: Path, state: dict | None = None) -> Path:
    """A tiny RoBERTa saved as ``config.json`` + ``pytorch_model.bin`` (``state`` replaces its weights)."""
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
    )
    model = RobertaModel(config, add_pooling_layer=False)
    config.save_pretrained(directory)
    torch.save(
        model.state_dict() if state is None else state(model.state_dict()),
        directory / "pytorch_model.bin",
    )
    return directory


def test_pretrained_text_directories_are_data_and_must_be_complete(tmp_path):
    from maskfm.methods.m3ae import TextEncoderConfig, build_text_encoder

    sentinel = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    evil = write_text_encoder(tmp_path / "evil", lambda sd: {**sd, "x": Payload()})
    with pytest.raises(
        CheckpointFileError, match=r"model.text.pretrained='.*evil': refused to unpickle"
    ):
        build_text_encoder(TextEncoderConfig(pretrained=str(evil)), 50, 1)
    assert not sentinel.exists()
    half = write_text_encoder(
        tmp_path / "half", lambda sd: {k: v for k, v in sd.items() if "encoder.layer" not in k}
    )
    with pytest.raises(
        IncompleteLoadError, match=r"'.*half' does not set \d+ of the text encoder's tensors"
    ):
        build_text_encoder(TextEncoderConfig(pretrained=str(half)), 50, 1)
    assert (
        build_text_encoder(TextEncoderConfig(pretrained=str(half), allow_partial=True), 50, 1)
        is not None
    )
    full = write_text_encoder(tmp_path / "full")
    assert (
        build_text_encoder(TextEncoderConfig(pretrained=str(full)), 50, 1).config.hidden_size == 16
    )


def test_pretrained_image_file_must_set_the_whole_vit(tmp_path):
    from maskfm.methods.m3ae import load_image_weights
    from maskfm.nn.vit import ViTEncoder

    vit = ViTEncoder(32, 8, 3, 32, 1, 2)
    torch.save(
        {k: v for k, v in vit.state_dict().items() if not k.startswith("blocks")},
        tmp_path / "half.pth",
    )
    with pytest.raises(
        IncompleteLoadError, match=r"half.pth'.*: loads \d+ of the model's \d+ tensors"
    ):
        load_image_weights(ViTEncoder(32, 8, 3, 32, 1, 2), str(tmp_path / "half.pth"))
    load_image_weights(
        ViTEncoder(32, 8, 3, 32, 1, 2), str(tmp_path / "half.pth"), allow_partial=True
    )


@pytest.mark.parametrize("content", ["../../etc/passwd", "abc --resume=must", "", "x" * 65])
def test_a_wandb_id_file_holds_only_an_id(tmp_path, content):
    from maskfm import loggers

    (tmp_path / loggers.WANDB_ID_FILE).write_text(content + "\n")
    with pytest.raises(ValueError, match=r"wandb_id.txt: not a W&B run id"):
        loggers.persistent_run_id(tmp_path)
    (tmp_path / loggers.WANDB_ID_FILE).write_text("3kf9x2ab\n")
    assert loggers.persistent_run_id(tmp_path) == "3kf9x2ab"
