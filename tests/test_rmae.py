"""R-MAE end to end on small sweeps (real spconv on CPU)."""

import pytest
import torch

pytest.importorskip("spconv", reason="R-MAE needs spconv (pip install 'maskfm[lidar]')")

from maskfm.data.lidar import LidarDataModule  # noqa: E402
from maskfm.masking.radial import azimuth_sectors  # noqa: E402
from maskfm.methods.rmae import RMAE, sparse_shape_of  # noqa: E402

# A 12.8 m x 12.8 m patch in front of the sensor with 0.8 m voxels: sparse shape (41, 16, 16).
SMALL = dict(point_cloud_range=[0.0, -6.4, -3.0, 12.8, 6.4, 1.0], voxel_size=[0.8, 0.8, 0.1])


@pytest.fixture(scope="module")
def batch():
    dm = LidarDataModule(
        dataset="synthetic", num_train=2, num_val=2, batch_size=2, max_voxels=0, **SMALL
    )
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_sparse_shape_as_openpcdet():
    assert sparse_shape_of([0, -40, -3, 70.4, 40, 1], [0.05, 0.05, 0.1]) == (41, 1600, 1408)
    assert sparse_shape_of(SMALL["point_cloud_range"], SMALL["voxel_size"]) == (41, 16, 16)


@pytest.mark.parametrize("decoder", ["sparse", "dense"])
def test_rmae_step_hides_whole_sectors_and_backpropagates(batch, decoder):
    model = RMAE(decoder=decoder, **SMALL)
    out = model(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and set(out.parts) == {"occupancy"}
    coords = batch["voxel_coords"]
    centers = model.voxel_centers(coords)
    for b in range(2):
        sel = coords[:, 0] == b
        sectors = azimuth_sectors(centers[sel], 1.0)
        kept = sectors[~out.mask[sel]].unique()
        assert len(kept) == int(0.1 * len(sectors.unique()) + 1e-9)
        assert torch.equal(~out.mask[sel], torch.isin(sectors, kept))
    out.loss.backward()
    assert model.encoder.conv_input[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("decoder", ["sparse", "dense"])
def test_reconstruction_clouds_show_the_first_sweep(batch, decoder):
    from maskfm.callbacks.render import render_panels

    model = RMAE(decoder=decoder, **SMALL).eval()
    out = model(batch, torch.Generator().manual_seed(0))
    clouds = model.reconstruction_clouds(batch, out)
    first = batch["voxel_coords"][:, 0] == 0
    centers = model.voxel_centers(batch["voxel_coords"])
    assert torch.equal(clouds["input"][0], centers[first])
    assert torch.equal(clouds["visible"][0], centers[first & ~out.mask])
    recon = {tuple(p) for p in clouds["reconstruction"][0].tolist()}
    assert recon <= {tuple(p) for p in centers[first].tolist()}  # a subset of the input voxels
    pictures = render_panels(clouds)
    assert {k: tuple(v.shape) for k, v in pictures.items()} == {k: (1, 3, 128, 128) for k in clouds}


def test_dense_decoder_loss_is_bce_over_every_cell(batch):
    """The loss equals BCE-with-logits against a dense occupancy grid built by hand from every
    input voxel (hidden ones included), averaged over all 2 x 41 x 16 x 16 cells."""
    model = RMAE(decoder="dense", **SMALL).eval()
    out = model(batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        encoded = model.encode(batch, keep=~out.mask)["encoded"]
        dense = torch.zeros(2, *encoded.spatial_shape, encoded.features.shape[1])
        for (b, z, y, x), f in zip(encoded.indices.tolist(), encoded.features, strict=True):
            dense[b, z, y, x] = f
        logits = model.decoder(dense.permute(0, 4, 1, 2, 3))[:, 0]
    target = torch.zeros(2, 41, 16, 16)
    for b, z, y, x in batch["voxel_coords"].tolist():
        target[b, z, y, x] = 1.0
    assert (
        target.sum() == len(batch["voxel_coords"]) > out.mask.sum() > 0
    )  # hidden voxels are targets too
    by_hand = (logits.clamp(min=0) - logits * target + torch.log1p(torch.exp(-logits.abs()))).mean()
    assert torch.allclose(
        out.loss, torch.nn.functional.binary_cross_entropy_with_logits(logits, target), atol=1e-6
    )
    assert torch.allclose(out.loss, by_hand, atol=1e-6)


def test_voxel_centres_are_metric_and_features_cover_every_voxel(batch):
    model = RMAE(**SMALL).eval()
    coords = batch["voxel_coords"]
    centers = model.voxel_centers(coords)
    assert (centers[:, 0] >= 0).all() and (centers[:, 0] <= 12.8).all()
    assert torch.allclose(centers[:, 2], -3.0 + (coords[:, 1].float() + 0.5) * 0.1)
    feats = model.features(batch)
    assert feats.shape == (len(coords), 16 + 32 + 64 + 64 + 128)


def test_rmae_checkpoint_loads_with_weights_only(compose_train, tmp_path):
    from maskfm.train import train

    cfg = compose_train(
        [
            "+experiment=rmae",
            "data.point_cloud_range=[0.0,-6.4,-3.0,12.8,6.4,1.0]",
            "data.voxel_size=[0.8,0.8,0.1]",
            "data.num_train=2",
            "data.num_val=2",
            "trainer.max_steps=1",
            "logger=none",
        ]
    )
    train(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1
    assert ckpt["datamodule_hyper_parameters"]["voxel_size"] == [0.8, 0.8, 0.1]


def test_voxel_probe_evaluation_writes_eval_json(compose_train, tmp_path):
    import json

    from maskfm.evaluate import evaluate

    cfg = compose_train(
        [
            "+experiment=rmae",
            "data.point_cloud_range=[0.0,-6.4,-3.0,12.8,6.4,1.0]",
            "data.voxel_size=[0.8,0.8,0.1]",
            "data.num_train=2",
            "data.num_val=2",
            "eval=voxel_probe",
            "eval.epochs=5",
        ],
        config_name="evaluate",
    )
    result = evaluate(cfg)
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["eval"] == "voxel_probe" and saved["checkpoint"] is None
    assert 0 <= saved["miou"] <= 100 and saved["num_test_voxels"] > 0
    assert (
        set(saved["iou"]) <= {"ground", "car", "building", "pole"} and result["feature_dim"] == 304
    )
