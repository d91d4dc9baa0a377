"""maskfm ViT -> timm, and MAE-layout files read by both maskfm and timm, give the same features."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file

from maskfm.interop.formats import open_weights
from maskfm.interop.imports import import_weights
from maskfm.interop.timm_vit import export_timm, timm_model_args
from maskfm.nn.vit import ViTEncoder
from tests.test_interop_formats import TINY_VIT, scrambled, tiny_mae


def timm_from_file(path, name, kwargs):
    """As the export prints it: num_classes=0 in the overlay keeps timm's load strict."""
    overlay = dict(file=str(path), num_classes=0)
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_loads_the_export_strictly_and_gives_the_same_features(tmp_path, suffix):
    model = tiny_mae(1)
    path, name, kwargs = export_timm(model.encoder, tmp_path / f"encoder{suffix}")
    assert name == "vit_base_patch16_224"  # no registered tiny ViT with 8 px patches at 32 px
    assert kwargs == dict(
        img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0,
        qkv_bias=True, class_token=True, global_pool="token", num_classes=0,
    )  # fmt: skip
    vit = timm_from_file(path, name, kwargs)  # pretrained loading is strict in timm
    assert set(vit.state_dict()) == set(model.encoder.state_dict())
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model.encoder(x), vit.forward_features(x)
        pooled = vit(x)
    assert ours.shape == theirs.shape == (3, 17, 32)
    assert (ours - theirs).abs().max() < 1e-5
    assert (pooled - ours[:, 0]).abs().max() < 1e-5  # global_pool='token': the normed CLS


def test_timm_refuses_a_file_missing_a_tensor(tmp_path):
    """The check above is strict: a file without one tensor does not load."""
    model = tiny_mae()
    path, name, kwargs = export_timm(model.encoder, tmp_path / "encoder.safetensors")
    state = load_file(str(path))
    del state["blocks.1.mlp.fc2.bias"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(RuntimeError, match="blocks.1.mlp.fc2.bias"):
        timm_from_file(tmp_path / "short.pth", name, kwargs)


def test_timm_names_registered_sizes():
    small = ViTEncoder(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6)
    assert timm_model_args(small)[0] == "vit_small_patch16_224"
    wide = ViTEncoder(img_size=(32, 48), patch_size=8, embed_dim=32, depth=1, num_heads=2)
    name, kwargs = timm_model_args(wide)
    assert kwargs["img_size"] == [32, 48] and kwargs["depth"] == 1
    vit = timm.create_model(name, pretrained=False, **kwargs)
    vit.load_state_dict(wide.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert (vit.forward_features(x) - wide(x)).abs().max() < 1e-5


def test_an_mae_format_file_gives_maskfm_the_features_timm_gets_from_it(tmp_path):
    """An MAE release-layout file (``{"model": timm ViT}``) made by timm: maskfm's import and
    timm's own loading of the same file agree."""
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    source = scrambled(timm.create_model("vit_base_patch16_224", pretrained=False, **kwargs), 7)
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": source.state_dict()}, path)
    vit = timm_from_file(path, "vit_base_patch16_224", kwargs)  # timm unwraps "model" itself

    model = tiny_mae(8)
    weights = open_weights(path)
    assert weights.format == "mae"
    report = import_weights(model, weights)
    assert report.required_loaded == report.required == 30
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model.encoder(x) - vit.forward_features(x)).abs().max() < 1e-5
    assert TINY_VIT["embed_dim"] == 32  # the sizes the file was made with
