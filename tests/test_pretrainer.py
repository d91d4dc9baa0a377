import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from maskfm.methods import MaskedModelingOutput, MaskedPretrainer
from maskfm.methods.mae import MAE
from maskfm.methods.pretrainer import param_groups_weight_decay
from maskfm.methods.schedule import warmup_cosine


def tiny_mae():
    return MAE(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    )


def test_no_weight_decay_on_biases_norms_and_tokens():
    model = tiny_mae()
    decay, no_decay = param_groups_weight_decay(model, 0.05, model.no_weight_decay())
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert "encoder.cls_token" in no_decay_names and "decoder.mask_token" in no_decay_names
    assert "encoder.blocks.0.norm1.weight" in no_decay_names
    assert "encoder.blocks.0.attn.qkv.bias" in no_decay_names
    assert "encoder.blocks.0.attn.qkv.weight" in decay_names
    assert "encoder.patch_embed.proj.weight" in decay_names
    # fixed positional tables are not optimised at all
    assert "encoder.pos_embed" not in decay_names | no_decay_names
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_warmup_cosine_schedule_values():
    assert warmup_cosine(0, 10, 110) == 0.0
    assert warmup_cosine(5, 10, 110) == 0.5
    assert warmup_cosine(10, 10, 110) == 1.0
    assert math.isclose(warmup_cosine(60, 10, 110), 0.5)
    assert math.isclose(warmup_cosine(110, 10, 110, min_ratio=0.1), 0.1)
    assert warmup_cosine(50, 10, float("inf")) == 1.0


def fake_trainer(batch_size=64, accumulate=2, world_size=4, total_steps=1000, max_epochs=10):
    return SimpleNamespace(
        datamodule=SimpleNamespace(batch_size=batch_size),
        accumulate_grad_batches=accumulate,
        world_size=world_size,
        estimated_stepping_batches=total_steps,
        max_epochs=max_epochs,
    )


def test_lr_follows_batch_scaling_rule_and_schedule(monkeypatch):
    system = MaskedPretrainer(tiny_mae(), base_lr=1.5e-4, warmup_epochs=2, min_lr=0.0)
    monkeypatch.setattr(MaskedPretrainer, "trainer", property(lambda self: fake_trainer()))
    conf = system.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    expected_lr = 1.5e-4 * 64 * 2 * 4 / 256
    assert system.lr == pytest.approx(expected_lr)
    assert conf["lr_scheduler"]["interval"] == "step"
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.95)
    assert opt.param_groups[0]["lr"] == 0.0  # warm-up starts at zero
    for _ in range(100):  # 2 of 10 epochs of 1000 steps = 200 warm-up steps
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(expected_lr * 0.5)


class NaNMethod(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.encoder = nn.Identity()

    def forward(self, batch, generator=None):
        loss = self.w * float("nan")
        return MaskedModelingOutput(loss=loss.sum(), parts={"recon": loss.sum()})


def test_non_finite_loss_stops_training(monkeypatch):
    system = MaskedPretrainer(NaNMethod())
    with pytest.raises(FloatingPointError, match="non-finite training loss nan at global step 0"):
        system.training_step({"image": torch.zeros(2, 1)}, 0)


def test_masks_depend_on_seed_epoch_and_batch_index():
    system = MaskedPretrainer(tiny_mae(), mask_seed=1)
    draw = lambda g: torch.rand(4, generator=g)  # noqa: E731
    assert torch.equal(draw(system.mask_generator(3)), draw(system.mask_generator(3)))
    assert not torch.equal(draw(system.mask_generator(3)), draw(system.mask_generator(4)))
    assert not torch.equal(draw(system.mask_generator(3)), draw(system.mask_generator(3, "val")))
    other = MaskedPretrainer(tiny_mae(), mask_seed=2)
    assert not torch.equal(draw(system.mask_generator(3)), draw(other.mask_generator(3)))


def test_onecycle_schedule_as_openpcdet(monkeypatch):
    system = MaskedPretrainer(
        tiny_mae(),
        optimizer=lambda groups, lr: torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99)),
        base_lr=0.003,
        lr_reference_batch=0,
        weight_decay=0.01,
        schedule="onecycle",
        pct_start=0.4,
        div_factor=10.0,
        final_div_factor=1e4,
        momentum_range=(0.85, 0.95),
        decay_all=True,
    )
    monkeypatch.setattr(
        MaskedPretrainer, "trainer", property(lambda self: fake_trainer(total_steps=100))
    )
    conf = system.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert system.lr == 0.003 and len(opt.param_groups) == 1  # absolute lr; decay on everything
    lrs, betas = [], []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        betas.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(3e-4) and max(lrs) == pytest.approx(3e-3, rel=1e-3)
    assert lrs.index(max(lrs)) in (39, 40) and lrs[-1] < 1e-6
    assert betas[0] == pytest.approx(0.95) and min(betas) == pytest.approx(0.85, abs=1e-3)
