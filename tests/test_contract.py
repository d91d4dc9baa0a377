"""The method contract, checked for every model config (conf/model/*.yaml) through the same
plumbing: build from the composed config, one forward on a real batch of its data group,
finite loss, gradients reaching the encoder, ``features`` shape, declared media.

A new method is covered by adding its model config, an experiment of the same name and,
if its defaults are large, a line in SMALL below."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from maskfm.config import CONFIG_DIR
from maskfm.masking import TokenLayout
from maskfm.methods import MaskedMethod, MaskedModelingOutput, Progress
from maskfm.methods.build import build_method
from tests.helpers import TINY_MAE
from tests.test_ddp import TINY_LIDAR, TINY_POINTS
from tests.test_eval_image_text import TINY_M3AE

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))

# Sizes that keep one step well under a second; the architecture is the config's.
SMALL = {
    "mae": [*TINY_MAE, "data.img_size=32"],
    "m3ae": [o for o in TINY_M3AE if not o.startswith(("+experiment", "trainer.", "callbacks."))],
    "point_mae": TINY_POINTS,
    "point_cmae": TINY_POINTS,
    "rmae": TINY_LIDAR,
}
COMMON = ["data.batch_size=2", "data.num_workers=0", "++data.num_train=4", "++data.num_val=2"]


def one_batch(cfg):
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    return datamodule, next(iter(datamodule.train_dataloader()))


def test_every_model_config_has_an_experiment_to_check_it_with():
    experiments = {p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")}
    assert set(MODELS) <= experiments, "add conf/experiment/<model>.yaml for the contract test"
    assert set(MODELS) == set(SMALL), "add the new model's small sizes to SMALL"


@pytest.mark.parametrize("name", MODELS)
def test_method_implements_the_contract(name, compose_train):
    cfg = compose_train([f"+experiment={name}", *SMALL[name], *COMMON])
    datamodule, batch = one_batch(cfg)
    method = build_method(cfg, datamodule)
    assert isinstance(method, MaskedMethod)
    assert isinstance(method.encoder, torch.nn.Module)
    assert set(method.media) <= {"panels", "clouds"}
    method.on_train_step(Progress(global_step=0, epoch=0, epoch_fraction=0.0, total_steps=10))

    out = method(batch, torch.Generator().manual_seed(0))
    assert (
        isinstance(out, MaskedModelingOutput) and out.loss.dim() == 0 and torch.isfinite(out.loss)
    )
    assert set(out.parts) and all(torch.isfinite(v) for v in out.parts.values())
    assert (
        out.mask is not None
        and out.mask.dtype == torch.bool
        and out.mask.any()
        and not out.mask.all()
    )
    if out.pred is not None:  # one entry per token, aligned with the mask
        assert out.pred.shape[: out.mask.dim()] == out.mask.shape

    out.loss.backward()
    grads = [p.grad for p in method.encoder.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), (
        "no gradient reached the encoder"
    )

    method.eval()
    with torch.no_grad():
        feats = method.features(batch)
    if "voxel_coords" in batch:  # ragged layout: one row per voxel
        assert out.mask.shape == (len(batch["voxel_coords"]),)
        assert feats.dim() == 2 and feats.shape[0] == len(batch["voxel_coords"])
    else:
        assert out.mask.dim() == 2 and out.mask.shape[0] == 2
        assert feats.dim() == 3 and feats.shape[0] == 2 and torch.isfinite(feats).all()

    with torch.no_grad():
        for medium, draw in (
            ("panels", method.reconstruction_panels),
            ("clouds", method.reconstruction_clouds),
        ):
            if medium in method.media:
                pictures = draw(batch, out)
                assert pictures and all(
                    isinstance(v, torch.Tensor) and v.numel() for v in pictures.values()
                )
            else:
                with pytest.raises(NotImplementedError):
                    draw(batch, out)


def test_the_step_hook_gets_training_progress(compose_train):
    """The pretrainer calls ``on_train_step`` before every step with where training stands."""
    from maskfm.train import train

    seen: list[Progress] = []
    cfg = compose_train(
        [
            "+experiment=point_mae",
            *SMALL["point_mae"],
            *COMMON,
            "trainer.max_epochs=2",
            "trainer.limit_val_batches=0",
            "print_config=false",
        ]
    )
    original = MaskedMethod.on_train_step
    MaskedMethod.on_train_step = lambda self, progress: seen.append(progress)
    try:
        train(cfg)
    finally:
        MaskedMethod.on_train_step = original
    assert [p.global_step for p in seen] == [0, 1, 2, 3]  # 4 samples, batch 2, 2 epochs
    assert [p.epoch_fraction for p in seen] == [0.0, 0.5, 1.0, 1.5]
    assert {p.total_steps for p in seen} == {4} and seen[-1].fraction == 0.75


# -- one masking path: maskers swap across methods whose layout they support -----------------
SWAPS = [
    ("point_mae", "block", ["masking.ratio=0.6"]),
    ("point_mae", "radial", ["masking.ratio=0.6", "masking.sector_deg=10"]),
    ("point_cmae", "block", ["masking.ratio=0.6"]),
    ("rmae", "random", ["masking.ratio=0.5"]),
    ("rmae", "block", ["masking.ratio=0.5", "masking.num_blocks=2"]),
]


@pytest.mark.parametrize(("name", "masker", "extra"), SWAPS, ids=[f"{n}-{m}" for n, m, _ in SWAPS])
def test_a_masker_works_for_every_method_whose_layout_it_supports(
    name, masker, extra, compose_train
):
    cfg = compose_train([f"+experiment={name}", f"masking={masker}", *extra, *SMALL[name], *COMMON])
    datamodule, batch = one_batch(cfg)
    method = build_method(cfg, datamodule)
    out = method(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    if "voxel_coords" in batch:  # ragged: exact count per sweep for the count maskers
        per_sweep = torch.bincount(batch["voxel_coords"][:, 0].long(), minlength=2)
        hidden = torch.bincount(batch["voxel_coords"][out.mask, 0].long(), minlength=2)
        assert torch.equal(hidden, torch.round(per_sweep.double() * method.masker.ratio).long())
    else:  # dense: the encoder batches visible tokens, so every cloud hides exactly round(r * G)
        g = out.mask.shape[1]
        assert out.mask.sum(dim=1).tolist() == [round(method.masker.ratio * g)] * 2


def test_radial_masks_point_patches_by_whole_sectors():
    """On point patches (equal counts) radial masking hides whole sectors, except the last
    one it reaches, which it hides in part to make the count exact."""
    from maskfm.masking import RadialMasker
    from maskfm.masking.radial import azimuth_sectors

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 64, 3, generator=g)
    masker = RadialMasker(0.6, sector_deg=30.0)
    mask = masker(TokenLayout.points(centers, equal_counts=True), torch.Generator().manual_seed(1))
    assert mask.sum(dim=1).tolist() == [38, 38, 38]
    assert masker.guarantee_for(TokenLayout.points(centers, equal_counts=True)) == "exact_count"
    for b in range(3):
        sectors = azimuth_sectors(centers[b], 30.0)
        mixed = [
            s for s in sectors.unique() if 0 < mask[b][sectors == s].sum() < (sectors == s).sum()
        ]
        assert len(mixed) <= 1


def test_ragged_and_dense_forms_give_the_same_random_mask():
    from maskfm.masking import RandomMasker

    positions = torch.randn(10, 3)
    batch_index = torch.tensor([1, 0, 1, 1, 0, 2, 2, 1, 0, 2])
    ragged = TokenLayout.ragged(positions, batch_index, 3)
    dense, slot = ragged.padded()
    assert torch.equal(dense.positions[batch_index, slot], positions) and dense.valid.sum() == 10
    flat = RandomMasker(0.5)(ragged, torch.Generator().manual_seed(3))
    again = RandomMasker(0.5)(dense, torch.Generator().manual_seed(3))
    assert torch.equal(flat, again[batch_index, slot])
    assert torch.bincount(batch_index[flat], minlength=3).tolist() == [
        2,
        2,
        2,
    ]  # round(0.5 * 3), 4 -> 2
