"""maskfm MAE <-> Hugging Face ViTMAE directories: the same numbers both ways, nothing pickled."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

from maskfm.errors import UserInputError
from maskfm.interop.checkpoint_file import CheckpointFileError
from maskfm.interop.formats import open_weights
from maskfm.interop.hf_vitmae import export_hf_vitmae
from maskfm.interop.imports import import_weights
from tests.test_interop_formats import scrambled, tiny_mae

L = 16  # patches of a 32 px picture with 8 px patches


def identity_noise(batch: int) -> torch.Tensor:
    """HF shuffles tokens by argsort(noise): increasing noise keeps the patch order."""
    return torch.arange(L, dtype=torch.float32).expand(batch, -1)


def pictures(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_maskfm_to_hf_gives_the_same_features_and_reconstruction(tmp_path):
    model = tiny_mae(1)
    path, cls = export_hf_vitmae(model, tmp_path / "hf")
    assert cls == "ViTMAEForPreTraining"
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["mask_ratio"] == 0.0 and config["layer_norm_eps"] == 1e-6
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (
        32,
        2,
        2,
    )
    assert config["norm_pix_loss"] is True and config["image_size"] == 32

    x = pictures()
    encoder = ViTMAEModel.from_pretrained(str(path)).eval()
    with torch.no_grad():
        ours = model.encoder(x)
        theirs = encoder(pixel_values=x, noise=identity_noise(2)).last_hidden_state
    assert theirs.shape == ours.shape == (2, 1 + L, 32)
    assert (theirs - ours).abs().max() < 1e-5

    # the decoder too: HF's own random 75 % mask, given to maskfm
    full = ViTMAEForPreTraining.from_pretrained(str(path), mask_ratio=0.75).eval()
    noise = torch.rand(2, L, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = full(pixel_values=x, noise=noise)
        mask = out.mask.bool()
        assert mask.sum(dim=1).tolist() == [12, 12]
        latent, idx = model.forward_encoder(x, mask)
        pred = model.forward_decoder(latent, idx.ids_restore)
        loss = model.forward_loss(x, pred, mask)
    assert (pred - out.logits).abs().max() < 1e-5
    assert abs(loss.item() - out.loss.item()) < 1e-5


def hf_directory(tmp_path, pretraining: bool = True, **overrides) -> tuple:
    sizes = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        image_size=32, patch_size=8, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=128, layer_norm_eps=1e-6,
        norm_pix_loss=True, mask_ratio=0.0,
    )  # fmt: skip
    config = ViTMAEConfig(**{**sizes, **overrides})
    cls = ViTMAEForPreTraining if pretraining else ViTMAEModel
    hf = scrambled(cls(config), 5)
    path = tmp_path / ("hf_pretraining" if pretraining else "hf_model")
    hf.save_pretrained(str(path))
    return hf, path


def test_hf_directory_to_maskfm_gives_the_same_outputs(tmp_path):
    hf, path = hf_directory(tmp_path)
    weights = open_weights(path)  # auto: a directory whose config.json says vit_mae
    assert weights.format == "hf_vitmae"
    model = tiny_mae(9)
    report = import_weights(model, weights)
    assert report.required == report.required_loaded == len(model.state_dict())
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    x = pictures(seed=4)
    with torch.no_grad():
        theirs = hf.vit(pixel_values=x, noise=identity_noise(2)).last_hidden_state
        assert (model.encoder(x) - theirs).abs().max() < 1e-5
        hf.config.mask_ratio = 0.75
        out = hf(pixel_values=x, noise=torch.rand(2, L, generator=torch.Generator().manual_seed(2)))
        latent, idx = model.forward_encoder(x, out.mask.bool())
        assert (model.forward_decoder(latent, idx.ids_restore) - out.logits).abs().max() < 1e-5


def test_an_encoder_only_hf_directory_loads_the_encoder_and_reports_the_decoder(tmp_path):
    hf, path = hf_directory(tmp_path, pretraining=False)
    model = tiny_mae(9)
    report = import_weights(model, open_weights(path))
    assert report.required == report.required_loaded == 30
    assert sorted(report.missing) == sorted(f"decoder.{k}" for k in model.decoder.state_dict())
    x = pictures(seed=5)
    with torch.no_grad():
        theirs = hf(pixel_values=x, noise=identity_noise(2)).last_hidden_state
        assert (model.encoder(x) - theirs).abs().max() < 1e-5


def test_hf_heads_that_differ_from_the_config_are_refused(tmp_path):
    _, path = hf_directory(tmp_path, num_attention_heads=4)
    with pytest.raises(UserInputError, match="num_attention_heads=4 but model.num_heads=2"):
        import_weights(tiny_mae(), open_weights(path))


def test_a_pickled_hf_directory_needs_the_trust_option(tmp_path):
    hf, path = hf_directory(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((path / "config.json").read_text())
    from safetensors.torch import load_file

    torch.save(load_file(str(path / "model.safetensors")), bin_dir / "pytorch_model.bin")
    with pytest.raises(
        CheckpointFileError,
        match=r"bin: no .safetensors weights \(it holds config.json, pytorch_model.bin\).*ckpt_trust_pickle=true",
    ):
        import_weights(tiny_mae(), open_weights(bin_dir))
    model = tiny_mae(9)
    report = import_weights(model, open_weights(bin_dir), trust_pickle=True)
    assert report.missing == [] and report.required_loaded == len(model.state_dict())
    x = pictures(seed=6)
    with torch.no_grad():
        theirs = hf.vit(pixel_values=x, noise=identity_noise(2)).last_hidden_state
        assert (model.encoder(x) - theirs).abs().max() < 1e-5


def test_a_directory_of_another_model_type_is_named(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(
        CheckpointFileError, match=r"config.json: model_type 'bert', expected 'vit_mae'"
    ):
        open_weights(tmp_path / "bert")
