"""Every experiment file composes and trains one step (fast_dev_run) on CPU."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from maskfm.config import CONFIG_DIR
from maskfm.train import train
from tests.helpers import make_image_folder, make_shapenet55


def make_kitti_root(root):
    from tests.test_data_lidar import make_kitti

    make_kitti(root)
    return root


def make_caption_arrows(root):
    from tests.test_data_captions import arrow_rows, write_arrow

    root.mkdir(parents=True, exist_ok=True)
    for name in ("roco", "medicat"):
        for split in ("train", "val"):
            write_arrow(root / f"{name}_{split}.arrow", arrow_rows(split))
    return root


REAL_FORMAT_FIXTURES = {
    "ImageFolderDataModule": make_image_folder,
    "shapenet55": make_shapenet55,
    "kitti": make_kitti_root,
    "arrow": make_caption_arrows,
}

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))

# Run anything on one CPU process with a small batch; the recipe itself is untouched.
ON_CPU = [
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "++trainer.strategy=auto",
    "trainer.precision=32-true",
    "++trainer.sync_batchnorm=false",
    "trainer.accumulate_grad_batches=1",
    "+trainer.fast_dev_run=true",
    "data.batch_size=2",
    "data.num_workers=0",
]


# Smaller inputs where a recipe's one CPU step would take minutes; the architecture is untouched.
SMALLER_INPUTS = {"m3ae_roco": ["data.img_size=64", "data.max_text_len=16"]}


def test_experiments_exist():
    assert {"mae", "point_mae", "point_cmae"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_runs_one_step(name, compose_train, tmp_path):
    overrides = [f"+experiment={name}", *ON_CPU, *SMALLER_INPUTS.get(name, [])]
    cfg = compose_train(overrides)
    if OmegaConf.is_missing(
        cfg.data, "root"
    ):  # a real format: give it a tiny folder of that format
        kind = cfg.data.get("dataset") or cfg.data._target_.rsplit(".", 1)[-1]
        if kind not in REAL_FORMAT_FIXTURES:
            pytest.fail(f"experiment {name}: no test fixture for data {kind}")
        overrides.append(f"data.root={REAL_FORMAT_FIXTURES[kind](tmp_path / 'data')}")
    if "num_train" in cfg.data:
        overrides += ["data.num_train=4", "data.num_val=2"]
    cfg = compose_train(overrides)
    assert cfg.run_name == name
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 1
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_mae_experiment_is_the_embedded_default(compose_train):
    cfg = compose_train(["+experiment=mae"])
    assert cfg.data._target_.endswith("SyntheticImageDataModule")
    model = instantiate(cfg.model, masker=instantiate(cfg.masking))
    assert model.masker.ratio == 0.75 and model.norm_pix_loss
    assert model.encoder.embed_dim == 192


def test_m3ae_recipe_matches_the_release(compose_train):
    cfg = compose_train(["+experiment=m3ae_roco", "data.root=/nonexistent"])
    m = cfg.model
    assert (m.image.size, m.image.patch_size, cfg.data.img_size, cfg.data.max_text_len) == (
        "base",
        16,
        288,
        64,
    )
    assert (m.text.model_type, m.text.hidden_size, m.text.num_layers) == ("roberta", 768, 12)
    assert (m.fusion.dim, m.fusion.depth, m.fusion.num_heads, m.mim_layer) == (768, 6, 12, 3)
    assert (m.decoder.embed_dim, m.decoder.depth, m.decoder.num_heads) == (384, 5, 6)
    assert cfg.masking.ratio == 0.75 and m.text_masker.ratio == 0.15 and not m.joint_pass
    assert dict(m.loss_weights) == {"mim": 1.0, "mlm": 1.0, "itm": 1.0}
    o = cfg.optim
    assert (o.base_lr, o.lr_reference_batch, o.weight_decay, o.schedule, o.warmup_fraction) == (
        1e-5,
        256,
        0.01,
        "linear",
        0.1,
    )
    assert list(o.optimizer.betas) == [0.9, 0.98] and set(o.lr_multipliers.values()) == {5}
    assert cfg.data.batch_size * cfg.trainer.devices == 256 and cfg.trainer.max_steps == 100_000


def test_full_recipe_matches_the_paper(compose_train):
    cfg = compose_train(["+experiment=mae_vit_base_imagenet", "data.root=/nonexistent"])
    assert cfg.model.size == "base" and cfg.model.patch_size == 16
    assert (cfg.model.decoder_embed_dim, cfg.model.decoder_depth, cfg.model.decoder_num_heads) == (
        512,
        8,
        16,
    )
    assert cfg.masking.ratio == 0.75 and cfg.optim.base_lr == 1.5e-4
    assert list(cfg.optim.optimizer.betas) == [0.9, 0.95] and cfg.optim.weight_decay == 0.05
    eff_batch = cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.accumulate_grad_batches
    assert eff_batch == 4096 and cfg.trainer.max_epochs == 800 and cfg.optim.warmup_epochs == 40
    assert Path(CONFIG_DIR).is_dir()
