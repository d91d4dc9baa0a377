"""M3AE: the three objectives, which fusion layer feeds which head, optimiser groups, loading."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from maskfm.data.captions import CaptionDataModule
from maskfm.methods.m3ae import IGNORE, M3AE
from maskfm.methods.pretrainer import MaskedPretrainer, param_groups_weight_decay
from maskfm.methods.schedule import warmup_linear
from maskfm.nn.vit import ViTEncoder

DIM = 32
TINY = dict(
    image=dict(img_size=32, patch_size=8, size="tiny", embed_dim=DIM, depth=1, num_heads=2),
    text=dict(
        hidden_size=DIM, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=40
    ),
    fusion=dict(dim=DIM, depth=4, num_heads=2, dropout=0.0),
    decoder=dict(embed_dim=DIM, depth=1, num_heads=2),
    mim_layer=2,
)


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    return CaptionDataModule(
        img_size=32,
        batch_size=8,
        num_train=16,
        num_val=8,
        cache_dir=str(tmp_path_factory.mktemp("captions")),
    )


@pytest.fixture
def batch(datamodule):
    return next(iter(datamodule.train_dataloader()))


def tiny_m3ae(datamodule, **kw) -> M3AE:
    torch.manual_seed(0)
    return M3AE(**datamodule.model_inputs(), **{**TINY, **kw})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_forward_returns_the_three_weighted_losses(datamodule, batch):
    model = tiny_m3ae(datamodule, loss_weights={"mim": 2.0, "mlm": 0.5, "itm": 1.0}).eval()
    out = model(batch, gen())
    assert set(out.parts) == {"mim", "mlm", "itm"} and set(out.metrics) == {"mlm_acc", "itm_acc"}
    expected = 2.0 * out.parts["mim"] + 0.5 * out.parts["mlm"] + out.parts["itm"]
    assert torch.allclose(out.loss, expected)
    assert out.pred.shape == (8, 16, 8 * 8 * 3)
    assert (out.mask.sum(1) == 12).all()  # round(0.75 * 16) patches hidden in every picture
    # untrained: about ln(vocab) for MLM and ln 2 for ITM
    assert abs(out.parts["itm"].item() - math.log(2)) < 0.1
    assert abs(out.parts["mlm"].item() - math.log(datamodule.vocab_size)) < 0.5


def test_mim_reads_fusion_layer_mim_layer_and_mlm_the_last(datamodule, batch):
    model = tiny_m3ae(datamodule)
    out = model(batch, gen())
    out.parts["mim"].backward(retain_graph=True)
    # layers after mim_layer (2 of 4) never see the MIM loss; the layers up to it do
    assert all(p.grad is None for p in model.fusion.image_layers[2:].parameters())
    assert model.fusion.image_layers[1].ffn[0].weight.grad.abs().sum() > 0
    assert model.mlm_head.decoder.weight.grad is None
    model.zero_grad(set_to_none=True)
    out.parts["mlm"].backward()
    assert model.fusion.text_layers[3].ffn[0].weight.grad.abs().sum() > 0
    assert model.mim_decoder.pred.weight.grad is None


def test_mim_prediction_equals_the_decoder_on_layer_output(datamodule, batch):
    model = tiny_m3ae(datamodule).eval()
    out = model(batch, gen())
    from maskfm.masking import mask_indices

    idx = mask_indices(out.mask)
    fused = model.infer(batch["image"], batch["input_ids"], batch["attention_mask"], idx.ids_keep)
    assert len(fused.image) == 4
    pred = model.mim_decoder(fused.image[1], idx.ids_restore)  # layer 2, text intact
    assert torch.allclose(pred, out.pred, atol=1e-5)


def test_mlm_labels_are_whole_words_and_never_special_or_padding(datamodule, batch):
    model = tiny_m3ae(datamodule)
    ids, labels, hidden = model.mask_text(batch, gen(3))
    scored = labels != IGNORE
    assert torch.equal(scored, hidden)
    assert not (scored & (batch["word_ids"] < 0)).any()  # <s>, </s>, <pad> never scored
    assert torch.equal(labels[scored], batch["input_ids"][scored])
    for i in range(ids.shape[0]):  # every hidden word is hidden with all its tokens
        words = batch["word_ids"][i][hidden[i]].unique()
        for w in words:
            assert hidden[i][batch["word_ids"][i] == w].all()
    valid = (batch["attention_mask"].bool() & (batch["word_ids"] >= 0)).sum(1)
    assert (hidden.sum(1) <= torch.round(0.15 * valid)).all() and hidden.any()


def test_mlm_loss_equals_cross_entropy_over_all_tokens(datamodule, batch):
    model = tiny_m3ae(datamodule).eval()
    ids, labels, _ = model.mask_text(batch, gen(1))
    fused = model.infer(batch["image"], ids, batch["attention_mask"])
    loss, _ = model.mlm_loss(fused, labels)
    logits = model.mlm_head(fused.text[-1])  # the release's full-vocabulary logits
    reference = F.cross_entropy(
        logits.view(-1, model.vocab_size), labels.view(-1), ignore_index=-100
    )
    assert torch.allclose(loss, reference, atol=1e-6)


def test_itm_swaps_exactly_half_the_images_for_another_sample(datamodule, batch):
    model = tiny_m3ae(datamodule)
    imgs = batch["image"]
    swapped, labels = model.mismatch(imgs, gen(5))
    assert labels.sum() == 4 and labels.numel() == 8
    for i in range(8):
        same = torch.equal(swapped[i], imgs[i])
        assert same == bool(labels[i])
    with pytest.raises(ValueError, match="at least 2"):
        model.mismatch(imgs[:1], gen())


def count_fusion_calls(model: M3AE) -> list[int]:
    calls = []
    model.fusion.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_released_recipe_runs_three_passes_and_joint_pass_one(datamodule, batch):
    model = tiny_m3ae(datamodule)
    calls = count_fusion_calls(model)
    model(batch, gen())
    assert len(calls) == 3
    joint = tiny_m3ae(datamodule, joint_pass=True).eval()
    calls = count_fusion_calls(joint)
    out = joint(batch, gen())
    assert len(calls) == 1 and set(out.parts) == {"mim", "mlm", "itm"}
    assert torch.isfinite(out.loss)


def test_joint_pass_scores_reconstruction_on_matched_pairs_only(datamodule, batch):
    model = tiny_m3ae(datamodule, joint_pass=True).eval()
    g = gen(7)
    out = model(batch, g)
    g = gen(7)  # replay the draws: image mask, text mask + corruption, then the mismatch
    model.masker(model.image_layout(8, batch["image"].device), g)
    model.mask_text(model.trim_padding(batch), g)
    _, labels = model.mismatch(batch["image"], g)
    matched = labels.bool()
    from maskfm.nn.losses import masked_mse

    target = model.mim_target(out.extras["mim_images"])
    assert torch.allclose(
        out.parts["mim"], masked_mse(out.pred, target, out.mask & matched[:, None])
    )
    with pytest.raises(AssertionError):  # all pairs would give another number
        assert torch.allclose(out.parts["mim"], masked_mse(out.pred, target, out.mask))


def test_loss_falls_when_training_on_one_batch(datamodule, batch):
    model = tiny_m3ae(datamodule)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    parts = []
    for step in range(40):  # new masks every step
        out = model(batch, gen(step))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        parts.append({k: v.item() for k, v in out.parts.items()})
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    for k in ("mim", "mlm"):
        assert mean(parts[-5:], k) < 0.8 * mean(parts[:5], k), k


def test_optimiser_groups_follow_the_release(compose_train, datamodule):
    cfg = compose_train(["+experiment=m3ae"])
    model = tiny_m3ae(datamodule)
    opt = instantiate(cfg.optim, _convert_="all")
    assert opt["optimizer"].keywords["betas"] == [0.9, 0.98] and opt["weight_decay"] == 0.01
    groups = param_groups_weight_decay(model, 0.01, model.no_weight_decay(), opt["lr_multipliers"])
    scale_of = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert scale_of[id(model.fusion.image_layers[0].ffn[0].weight)] == (5.0, 0.01)
    assert scale_of[id(model.mlm_head.decoder.weight)] == (5.0, 0.01)
    assert scale_of[id(model.itm_head.weight)] == (5.0, 0.01)
    assert scale_of[id(model.mim_decoder.pred.weight)] == (5.0, 0.01)
    assert scale_of[id(model.image_proj.bias)] == (5.0, 0.0)
    assert scale_of[id(model.encoder.blocks[0].attn.qkv.weight)] == (1.0, 0.01)
    assert scale_of[id(model.text_encoder.embeddings.word_embeddings.weight)] == (1.0, 0.01)
    assert scale_of[id(model.text_encoder.embeddings.LayerNorm.weight)] == (1.0, 0.0)
    assert sum(len(g["params"]) for g in groups) == sum(
        1 for p in model.parameters() if p.requires_grad
    )


def test_linear_schedule_warms_up_for_ten_percent_then_decays_to_zero():
    total = 1000
    assert warmup_linear(0, 100, total) == 0.0
    assert warmup_linear(50, 100, total) == 0.5
    assert warmup_linear(100, 100, total) == 1.0
    assert warmup_linear(550, 100, total) == pytest.approx(0.5)
    assert warmup_linear(1000, 100, total) == 0.0


def test_pretrainer_applies_the_multipliers_to_the_lr(datamodule):
    model = tiny_m3ae(datamodule)
    system = MaskedPretrainer(
        model,
        base_lr=1e-5,
        lr_reference_batch=0,
        weight_decay=0.01,
        schedule="linear",
        warmup_fraction=0.1,
        lr_multipliers={"fusion": 5, "mlm_head": 5},
    )

    dm = datamodule

    class _Trainer:  # what configure_optimizers reads
        datamodule = dm
        accumulate_grad_batches, world_size, max_epochs = 1, 1, 1
        estimated_stepping_batches = 100

    system._trainer = _Trainer()  # noqa: SLF001
    conf = system.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    for _ in range(10):  # end of the 10 % warm-up
        opt.step()
        sched.step()
    lrs = {g["lr_scale"]: g["lr"] for g in opt.param_groups}
    assert lrs[1.0] == pytest.approx(1e-5) and lrs[5.0] == pytest.approx(5e-5)


def test_pretrained_text_encoder_loads_from_a_local_directory(tmp_path, datamodule):
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(
        vocab_size=datamodule.vocab_size,
        hidden_size=DIM,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        pad_token_id=datamodule.pad_token_id,
        type_vocab_size=1,
    )
    torch.manual_seed(1)
    saved = RobertaModel(config, add_pooling_layer=False)
    saved.save_pretrained(tmp_path / "roberta")
    datamodule.tokenizer.save_pretrained(tmp_path / "roberta")
    model = tiny_m3ae(datamodule, text={**TINY["text"], "pretrained": str(tmp_path / "roberta")})
    for k, v in saved.state_dict().items():
        assert torch.equal(model.text_encoder.state_dict()[k], v), k
    with pytest.raises(
        FileNotFoundError, match="neither a local directory nor in the local Hugging Face cache"
    ):
        tiny_m3ae(datamodule, text={**TINY["text"], "pretrained": "roberta-base"})
    # the tokenizer saved beside it is what data.tokenizer loads
    dm = CaptionDataModule(
        img_size=32, batch_size=2, num_train=2, num_val=2, tokenizer=str(tmp_path / "roberta")
    )
    assert dm.vocab_size == datamodule.vocab_size


def test_pretrained_image_encoder_is_opt_in_and_reports_shape_mismatches(tmp_path, datamodule):
    torch.manual_seed(2)
    vit = ViTEncoder(32, 8, 3, DIM, 1, 2)
    torch.save(
        {"model": {f"module.{k}": v for k, v in vit.state_dict().items()}}, tmp_path / "vit.pth"
    )
    model = tiny_m3ae(datamodule, image={**TINY["image"], "pretrained": str(tmp_path / "vit.pth")})
    assert torch.equal(model.encoder.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
    wide = ViTEncoder(32, 8, 3, 2 * DIM, 1, 2)
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(
        ValueError, match=r"(?s)wide.pth.*MISMATCHED +blocks.0.attn.qkv.weight: file"
    ):
        tiny_m3ae(datamodule, image={**TINY["image"], "pretrained": str(tmp_path / "wide.pth")})


def test_bad_sub_config_keys_are_named(datamodule):
    with pytest.raises(TypeError, match=r"model.fusion: unknown keys \['width'\]"):
        tiny_m3ae(datamodule, fusion={"width": 3})
    with pytest.raises(ValueError, match="mim_layer"):
        tiny_m3ae(datamodule, mim_layer=5)


def test_trimming_shared_padding_changes_nothing_but_speed(datamodule, batch):
    model = tiny_m3ae(datamodule).eval()
    trimmed = model.trim_padding(batch)
    width = int(batch["attention_mask"].sum(1).max())
    assert trimmed["input_ids"].shape[1] == width < batch["input_ids"].shape[1]
    ids, attn = batch["input_ids"], batch["attention_mask"]
    full = model.infer(batch["image"], ids, attn)
    short = model.infer(batch["image"], ids[:, :width], attn[:, :width])
    assert torch.allclose(full.text[-1][:, :width], short.text[-1], atol=1e-5)
    assert torch.allclose(full.image[-1], short.image[-1], atol=1e-5)


def test_reconstruction_panels_are_pictures(datamodule, batch):
    model = tiny_m3ae(datamodule).eval()
    out = model(batch, gen())
    panels = model.reconstruction_panels(batch, out)
    assert set(panels) == {"input", "masked", "reconstruction", "reconstruction+visible"}
    assert all(p.shape == (8, 3, 32, 32) for p in panels.values())
