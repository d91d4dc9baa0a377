"""Recognising weight layouts (ckpt_format), original MAE files and the Point-MAE round trip."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from maskfm.errors import UserInputError
from maskfm.interop.checkpoint_file import CheckpointFileError
from maskfm.interop.formats import UnknownFormatError, open_weights
from maskfm.interop.imports import import_weights
from maskfm.interop.loading import IncompleteLoadError
from maskfm.interop.mae import mae_state_dict
from maskfm.interop.point_mae import (
    export_point_mae_original,
    load_point_mae_checkpoint,
    original_state_dict,
)
from maskfm.methods.mae import MAE
from maskfm.methods.point_cmae import PointCMAE
from maskfm.methods.point_mae import PointMAE

# A two-block ViT on 32 px pictures with 8 px patches (16 patches).
TINY_VIT = dict(
    img_size=32,
    patch_size=8,
    size="tiny",
    embed_dim=32,
    depth=2,
    num_heads=2,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
)
SMALL_POINTS = dict(
    num_groups=8, group_size=8, embed_dim=32, depth=1, num_heads=2, decoder_depth=1,
    decoder_num_heads=2, pointnet_hidden=(16, 32, 64),
)  # fmt: skip


def scrambled(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every tensor (buffers too) set to distinct random values, so a tensor that is not
    carried over, or lands in the wrong place, changes the result."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                values = torch.randn(t.shape, generator=g) * 0.5
                t.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)
    return module.eval()


def tiny_mae(seed: int = 0) -> MAE:
    return scrambled(MAE(**TINY_VIT), seed)  # pyright: ignore[reportReturnType]


def equal_state(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    """Keys whose tensors differ."""
    sb = b.state_dict()
    return [k for k, v in a.state_dict().items() if not torch.equal(v, sb[k])]


def test_original_mae_file_loads_every_tensor_into_maskfm(tmp_path):
    source = tiny_mae(1)
    encoder_only = mae_state_dict(source)
    assert "cls_token" in encoder_only and "blocks.1.attn.qkv.weight" in encoder_only
    assert not any(k.startswith(("encoder.", "decoder")) for k in encoder_only)
    assert len(encoder_only) == len(source.encoder.state_dict()) == 30  # 4 + 2 x 12 + 2
    torch.save({"model": encoder_only}, tmp_path / "mae_pretrain_vit_tiny.pth")
    weights = open_weights(tmp_path / "mae_pretrain_vit_tiny.pth")
    assert weights.format == "mae" and weights.label == "original MAE"
    model = tiny_mae(2)
    report = import_weights(model, weights)
    assert report.required == report.required_loaded == 30 and report.unexpected == []
    assert sorted(report.missing) == sorted(f"decoder.{k}" for k in model.decoder.state_dict())
    assert [k for k in equal_state(source, model) if k.startswith("encoder.")] == []
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x), source.encoder(x), rtol=0, atol=0)

    # the full pretraining layout (models_mae.py): the decoder comes too, and then must
    full = mae_state_dict(source, with_decoder=True)
    assert {"mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_pred.bias"} <= set(
        full
    )
    torch.save({"model": full, "epoch": 799}, tmp_path / "checkpoint-799.pth")
    model = tiny_mae(3)
    report = import_weights(model, open_weights(tmp_path / "checkpoint-799.pth"))
    assert report.missing == [] and report.unexpected == [] and equal_state(source, model) == []
    del full["decoder_pred.weight"]
    torch.save({"model": full}, tmp_path / "no_pred.pth")
    with pytest.raises(IncompleteLoadError, match=r"MISSING\s+decoder.pred.weight"):
        import_weights(tiny_mae(), open_weights(tmp_path / "no_pred.pth"))


def test_an_mae_file_of_another_size_names_the_sizes_it_holds(tmp_path):
    big = MAE(**{**TINY_VIT, "embed_dim": 48, "depth": 3})
    torch.save({"model": mae_state_dict(big)}, tmp_path / "mae.pth")
    with pytest.raises(IncompleteLoadError) as info:
        import_weights(tiny_mae(), open_weights(tmp_path / "mae.pth"))
    message = str(info.value)
    assert "the file holds a ViT of width 48, depth 3, 8 px patches, 3 channels" in message
    assert "encoder.cls_token: file (1, 1, 48) vs model (1, 1, 32)" in message


def test_mae_finetuned_files_report_the_head_and_need_a_partial_load(tmp_path):
    """MAE's fine-tuned checkpoints have head.* and fc_norm.* instead of norm.* (global pool)."""
    sd = mae_state_dict(tiny_mae())
    sd["fc_norm.weight"], sd["fc_norm.bias"] = sd.pop("norm.weight"), sd.pop("norm.bias")
    sd["head.weight"], sd["head.bias"] = torch.zeros(10, 32), torch.zeros(10)
    torch.save({"model": sd}, tmp_path / "mae_finetuned.pth")
    weights = open_weights(tmp_path / "mae_finetuned.pth")
    with pytest.raises(IncompleteLoadError, match="loads 28 of the model's 30 'encoder' tensors"):
        import_weights(tiny_mae(), weights)
    report = import_weights(tiny_mae(), weights, allow_partial=True)
    assert {"encoder.norm.weight", "encoder.norm.bias"} <= set(report.missing)
    assert set(report.unexpected) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}


def point_sd(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"module.{k}": v for k, v in original_state_dict(method).items()}


def mae_sd() -> dict[str, torch.Tensor]:
    return mae_state_dict(tiny_mae())


@pytest.mark.parametrize(
    "content, expected",
    [
        (lambda: {"state_dict": {"model.w": torch.zeros(1)}, "global_step": 2}, "maskfm"),
        (lambda: {"model": mae_sd()}, "mae"),
        (lambda: mae_sd(), "mae"),  # a bare timm/MAE ViT state dict
        (lambda: {"base_model": point_sd(PointMAE(**SMALL_POINTS)), "epoch": 300}, "point_mae"),
        (lambda: {"model": point_sd(PointMAE(**SMALL_POINTS))}, "point_mae"),
        (lambda: {"base_model": point_sd(PointCMAE(**SMALL_POINTS))}, "point_mae"),
    ],
    ids=["maskfm", "mae", "bare-vit", "point_mae", "point_mae-model-key", "point_cmae"],
)
def test_auto_recognises_each_layout_by_its_keys(tmp_path, content, expected):
    path = tmp_path / "weights.pth"
    torch.save(content(), path)
    assert open_weights(path).format == expected
    assert open_weights(path, expected).format == expected


def test_mae_model_key_is_not_taken_for_point_mae(tmp_path):
    """Both originals may store ``{"model": ...}``; the key set decides, not the key name."""
    torch.save({"model": mae_sd()}, tmp_path / "mae.pth")
    with pytest.raises(
        UnknownFormatError,
        match=r"mae.pth: ckpt_format=point_mae but the file is not an original Point-MAE "
        r"checkpoint \(pretrain.pth\) \(it looks like: mae\)",
    ):
        open_weights(tmp_path / "mae.pth", "point_mae")
    point = PointMAE(**SMALL_POINTS)
    with pytest.raises(
        UserInputError,
        match="an original MAE checkpoint \\(a ViT\\), but the composed config builds PointMAE",
    ):
        import_weights(point, open_weights(tmp_path / "mae.pth"))


def test_unknown_and_ambiguous_files_are_refused_naming_the_file(tmp_path):
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(2)}}, tmp_path / "resnet.pth")
    with pytest.raises(UnknownFormatError) as info:
        open_weights(tmp_path / "resnet.pth")
    assert str(info.value).startswith(f"{tmp_path / 'resnet.pth'}: not a layout maskfm recognises")
    assert "'model' holds backbone.conv1.weight" in str(info.value)
    assert "ckpt_format=maskfm|mae|hf_vitmae|point_mae" in str(info.value)

    torch.save(
        {"state_dict": {"model.w": torch.zeros(1)}, "model": mae_sd()}, tmp_path / "both.pth"
    )
    with pytest.raises(
        UnknownFormatError,
        match=r"both.pth: ambiguous, it matches the maskfm and the mae layouts .*pass ckpt_format=maskfm\|mae",
    ):
        open_weights(tmp_path / "both.pth")
    assert open_weights(tmp_path / "both.pth", "mae").format == "mae"
    assert open_weights(tmp_path / "both.pth", "maskfm").format == "maskfm"

    with pytest.raises(UserInputError, match="ckpt_format='timm': expected one of auto, maskfm"):
        open_weights(tmp_path / "both.pth", "timm")
    (tmp_path / "dir").mkdir()
    with pytest.raises(CheckpointFileError, match=r"dir: a directory without config.json"):
        open_weights(tmp_path / "dir")
    with pytest.raises(CheckpointFileError, match=r"dir: a directory; ckpt_format=mae expects"):
        open_weights(tmp_path / "dir", "mae")
    (tmp_path / "x.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    with pytest.raises(
        CheckpointFileError, match=r"x.safetensors: not a readable safetensors file"
    ):
        open_weights(tmp_path / "x.safetensors")


@pytest.mark.parametrize("method", [PointMAE, PointCMAE])
def test_point_methods_round_trip_through_the_original_layout(tmp_path, method):
    source = scrambled(method(**SMALL_POINTS), 4)
    path = export_point_mae_original(source, tmp_path / "pretrain.pth")
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"base_model", "epoch"}
    keys = set(saved["base_model"])
    assert len(keys) == len(source.state_dict())
    assert all(not k.startswith(("encoder.", "decoder.", "decoder2.")) for k in keys)
    assert sum(k.startswith("MAE_encoder.") for k in keys) == len(source.encoder.state_dict()) + (
        4 if method is PointCMAE else 0
    )
    if method is PointCMAE:  # Point_CMAE.py's names
        assert {
            "mask_token1",
            "mask_token2",
            "MAE_encoder.cls_token1",
            "MAE_encoder.cls_pos2",
        } <= keys
        assert any(k.startswith("MAE_decoder_.blocks.0.") for k in keys)
        assert {"increase_dim_.0.weight", "decoder_pos_embed2.2.bias"} <= keys
    else:
        assert {"mask_token", "increase_dim.0.weight", "decoder_pos_embed.0.weight"} <= keys
    fresh = scrambled(method(**SMALL_POINTS), 5)
    report = load_point_mae_checkpoint(fresh, path)
    assert report.missing == [] and report.unexpected == [] and equal_state(source, fresh) == []


def test_point_mae_export_is_the_released_layout():
    """Default sizes: the 209 keys and shapes of the released pretrain.pth (reference §5.1)."""
    from tests.test_point_methods import original_point_mae_state_dict

    model = PointMAE()
    released = original_point_mae_state_dict(model, prefix="")
    exported = original_state_dict(model)
    assert len(exported) == 209
    assert {k: tuple(v.shape) for k, v in exported.items()} == {
        k: tuple(v.shape) for k, v in released.items()
    }


def test_openpcdet_point_feature_check():
    from maskfm.interop.openpcdet import check_point_features

    def data(**kw):
        return OmegaConf.create({"dataset": "synthetic", "grid": None, **kw})

    assert "OpenPCDet kitti_dataset.yaml" in check_point_features(4, data(dataset="kitti"), None)
    assert "kitti_dataset.yaml" in check_point_features(4, data(grid="kitti"), None)
    for dataset, extra in (("nuscenes", "timestamp"), ("waymo", "elongation")):
        with pytest.raises(UserInputError) as info:
            check_point_features(4, data(dataset=dataset), None)
        message = str(info.value)
        assert (
            f"OpenPCDet's {dataset}_dataset.yaml feeds 5 (x, y, z, intensity, {extra})" in message
        )
        assert "export.openpcdet_in_channels=4" in message
        assert "backbone_3d.conv_input.0.weight" in message
        assert "export.openpcdet_in_channels" in check_point_features(4, data(dataset=dataset), 4)
    with pytest.raises(
        UserInputError, match="export.openpcdet_in_channels=5 but the backbone takes 4"
    ):
        check_point_features(4, data(dataset="kitti"), 5)
    assert "not checked" in check_point_features(4, data(), None)
