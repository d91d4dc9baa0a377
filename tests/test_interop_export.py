"""``maskfm.export`` end to end on checkpoints of 2-step training runs: each written file loads
where it is meant to and computes what maskfm computes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskfm.errors import UserInputError
from maskfm.evaluate import load_model
from maskfm.export import export
from maskfm.interop.point_mae import load_point_mae_checkpoint
from maskfm.train import train
from tests.helpers import TINY_MAE
from tests.test_evaluate import TINY_POINTS

MAE_RUN = [
    "+experiment=mae",
    *TINY_MAE,
    "data.img_size=32",
    "data.batch_size=4",
    "data.num_train=16",
    "data.num_val=8",
    "callbacks.reconstructions.every_n_steps=0",
    "logger=none",
]
RMAE_RUN = [
    "+experiment=rmae",
    "data.point_cloud_range=[0.0,-6.4,-3.0,12.8,6.4,1.0]",
    "data.voxel_size=[0.8,0.8,0.1]",
    "data.batch_size=2",
    "data.num_train=4",
    "data.num_val=2",
    "logger=none",
]


def trained(compose_train, tmp_path: Path, overrides: list[str]) -> Path:
    """last.ckpt of a 2-step run of ``overrides`` (run directory ``tmp_path/run``)."""
    _, objects = train(compose_train([*overrides, "trainer.max_steps=2"]))
    assert objects["trainer"].global_step == 2
    return tmp_path / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture
def mae_ckpt(compose_train, tmp_path):
    return trained(compose_train, tmp_path, MAE_RUN)


def exported(compose_train, overrides: list[str]) -> dict:
    return export(compose_train(overrides, config_name="export"))


def pictures() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_export_timm_hf_and_original_from_a_trained_mae(compose_train, tmp_path, mae_ckpt):
    model, info = load_model(
        compose_train([*MAE_RUN, f"ckpt_path={mae_ckpt}"], config_name="evaluate"), mae_ckpt
    )
    model.eval()
    assert info["format"] == "maskfm" and info["global_step"] == 2
    x = pictures()
    with torch.no_grad():
        want = model.encoder(x)
    base = [*MAE_RUN, f"ckpt_path={mae_ckpt}"]

    result = exported(compose_train, [*base, "export.format=timm"])
    assert result["path"] == str(tmp_path / "run" / "encoder.safetensors")
    saved = json.loads((tmp_path / "run" / "export.json").read_text())
    assert saved["timm_kwargs"]["embed_dim"] == 32 and saved["source"]["global_step"] == 2
    scope = {"images": x}
    exec(result["load"], scope)  # the printed snippet, as a user would run it
    assert (scope["tokens"] - want).abs().max() < 1e-5

    result = exported(compose_train, [*base, "export.format=hf", f"export.path={tmp_path / 'hf'}"])
    assert result["hf_class"] == "ViTMAEForPreTraining"
    scope = {"images": x}
    exec(result["load"], scope)
    assert (scope["tokens"] - want).abs().max() < 1e-5

    result = exported(compose_train, [*base, "export.format=original"])
    path = Path(result["path"])
    assert path.name == "mae_pretrain.pth"
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"model"} and "blocks.1.attn.qkv.weight" in saved["model"]
    assert not any(k.startswith("decoder") for k in saved["model"])  # as mae_pretrain_vit_*.pth
    # ... and back: evaluate's loader recognises MAE's layout
    back, info = load_model(
        compose_train([*MAE_RUN, f"ckpt_path={path}"], config_name="evaluate"), path
    )
    assert (
        info["format"] == "original MAE"
        and info["required_loaded"] == info["required_tensors"] == 30
    )
    with torch.no_grad():
        assert torch.equal(back.eval().encoder(x), want)

    result = exported(compose_train, [*base, "export.format=original", "export.with_decoder=true"])
    assert "decoder_pred.weight" in torch.load(result["path"], weights_only=True)["model"]


def test_export_refuses_what_it_cannot_write(compose_train, tmp_path, mae_ckpt):
    base = [*MAE_RUN, f"ckpt_path={mae_ckpt}"]
    with pytest.raises(
        UserInputError, match="maskfm.export needs export.format=timm|hf|original|openpcdet"
    ):
        exported(compose_train, base)
    with pytest.raises(UserInputError, match="export.format='onnx': expected one of timm, hf"):
        exported(compose_train, [*base, "export.format=onnx"])
    with pytest.raises(
        UserInputError,
        match="export.format=openpcdet writes R-MAE's sparse backbone, but the config builds MAE",
    ):
        exported(compose_train, [*base, "export.format=openpcdet"])
    with pytest.raises(UserInputError, match="maskfm.export needs ckpt_path"):
        exported(compose_train, [*MAE_RUN, "export.format=timm"])


def test_export_point_mae_to_the_original_layout(compose_train, tmp_path):
    from maskfm.methods.point_mae import PointMAE

    overrides = [o for o in TINY_POINTS] + ["logger=none"]
    ckpt = trained(compose_train, tmp_path, overrides)
    result = exported(compose_train, [*overrides, f"ckpt_path={ckpt}", "export.format=original"])
    assert result["layout"] == "Point-MAE" and Path(result["path"]).name == "pretrain.pth"
    cfg = compose_train([*overrides, f"ckpt_path={ckpt}"], config_name="evaluate")
    model, _ = load_model(cfg, ckpt)
    assert isinstance(model, PointMAE)
    fresh = PointMAE(
        num_groups=16, group_size=16, embed_dim=32, depth=1, num_heads=2, decoder_depth=1,
        decoder_num_heads=2, pointnet_hidden=(16, 32, 64),
    )  # fmt: skip
    report = load_point_mae_checkpoint(fresh, result["path"])
    assert report.missing == [] and report.unexpected == []
    own = fresh.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())


def test_export_rmae_to_openpcdet_checks_the_point_features(compose_train, tmp_path):
    ckpt = trained(compose_train, tmp_path, RMAE_RUN)
    base = [*RMAE_RUN, f"ckpt_path={ckpt}", "export.format=openpcdet"]
    result = exported(compose_train, base)
    state = torch.load(result["path"], weights_only=True)["model_state"]
    assert all(k.startswith("backbone_3d.") for k in state)
    assert state["backbone_3d.conv_input.0.weight"].shape == (16, 3, 3, 3, 4)
    # the same backbone for a nuScenes OpenPCDet config (5 point features): refused unless stated
    kept = [o for o in base if not o.startswith(("data.num_", "data.batch"))]
    nuscenes = [*kept, "data=nuscenes", "data.root=/nonexistent"]  # exporting reads no data
    with pytest.raises(UserInputError, match=r"OpenPCDet's nuscenes_dataset.yaml feeds 5"):
        exported(compose_train, nuscenes)
    result = exported(compose_train, [*nuscenes, "export.openpcdet_in_channels=4"])
    assert Path(result["path"]).is_file()


@pytest.mark.slow
def test_the_export_command_line(tmp_path, mae_ckpt):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "maskfm.export", *MAE_RUN, f"ckpt_path={mae_ckpt}", *args,
             f"paths.log_dir={tmp_path}/runs", "print_config=false"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    proc = run("export.format=timm")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "timm.create_model('vit_base_patch16_224', pretrained=True" in proc.stdout
    written = list((tmp_path / "runs" / "export" / "mae").glob("*/encoder.safetensors"))
    assert len(written) == 1 and f"wrote {written[0]}" in proc.stdout
    proc = run()
    assert proc.returncode == 2 and "error: maskfm.export needs export.format=" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_m3ae_image_encoder_exports_to_timm_and_takes_mae_weights(compose_train, tmp_path):
    """M3AE's image encoder is a ViTEncoder: timm export, and an MAE release file imports
    into it (the text side and fusion stay as built, reported missing)."""
    from tests.test_eval_image_text import TINY_M3AE

    run = [*TINY_M3AE, "logger=none", "callbacks.reconstructions.every_n_steps=0"]
    ckpt = trained(compose_train, tmp_path, run)
    result = exported(compose_train, [*run, f"ckpt_path={ckpt}", "export.format=timm"])
    cfg = compose_train([*run, f"ckpt_path={ckpt}"], config_name="evaluate")
    from hydra.utils import instantiate

    model, _ = load_model(cfg, ckpt, instantiate(cfg.data, _convert_="all"))
    x = pictures()
    scope = {"images": x}
    exec(result["load"], scope)
    with torch.no_grad():
        assert (scope["tokens"] - model.eval().encoder(x)).abs().max() < 1e-5

    from maskfm.interop.mae import mae_state_dict

    release = tmp_path / "mae_pretrain.pth"
    torch.save({"model": mae_state_dict(model)}, release)
    cfg = compose_train([*run, f"ckpt_path={release}"], config_name="evaluate")
    fresh, info = load_model(cfg, release, instantiate(cfg.data, _convert_="all"))
    assert info["format"] == "original MAE" and info["unexpected"] == []
    assert info["required_loaded"] == info["required_tensors"] == len(model.encoder.state_dict())
    assert any(k.startswith("text_encoder.") for k in info["missing"])
    with torch.no_grad():
        assert torch.equal(fresh.eval().encoder(x), model.encoder(x))
