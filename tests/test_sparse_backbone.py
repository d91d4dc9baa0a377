"""OpenPCDet-compatible VoxelBackBone8x / VoxelResBackBone8x on CPU: shapes, names, export."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip(
    "spconv.pytorch", reason='spconv not installed (CPU: pip install "maskfm[lidar]")'
)

from maskfm.nn.sparse_backbone import (  # noqa: E402
    VoxelBackBone8x,
    VoxelResBackBone8x,
    backbone_state_dict_for_openpcdet,
    export_openpcdet_checkpoint,
)


@pytest.fixture(autouse=True)
def _single_threaded():
    """spconv's CPU path runs hundreds of tiny parallel regions per conv; on a busy 2-core box
    multi-threading makes this file ~50x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


KITTI_SHAPE = (41, 1600, 1408)  # (z, y, x) = grid_size[::-1] + [1, 0, 0]
C_IN = 4
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def conv(c_out: int, c_in: int, k=(3, 3, 3)) -> tuple[int, ...]:
    """Expected spconv 2.x (KRSC) weight shape ``[out, kz, ky, kx, in]``."""
    return (c_out, *k, c_in)


# Written from the reference table (lidar.md §1.4): module path -> conv weight shape / BN width.
PLAIN_CONVS = {
    "conv_input.0": conv(16, C_IN),
    "conv1.0.0": conv(16, 16),
    "conv2.0.0": conv(32, 16),
    "conv2.1.0": conv(32, 32),
    "conv2.2.0": conv(32, 32),
    "conv3.0.0": conv(64, 32),
    "conv3.1.0": conv(64, 64),
    "conv3.2.0": conv(64, 64),
    "conv4.0.0": conv(64, 64),
    "conv4.1.0": conv(64, 64),
    "conv4.2.0": conv(64, 64),
    "conv_out.0": conv(128, 64, (3, 1, 1)),
}
PLAIN_BNS = {name[:-1] + "1": shape[0] for name, shape in PLAIN_CONVS.items()}


def _res_stage(stage: str, channels: int, first: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{stage}.{i}.conv{j}": conv(channels, channels) for i in (first, first + 1) for j in (1, 2)
    }


RES_CONVS = {
    "conv_input.0": conv(16, C_IN),
    **_res_stage("conv1", 16, 0),
    "conv2.0.0": conv(32, 16),
    **_res_stage("conv2", 32, 1),
    "conv3.0.0": conv(64, 32),
    **_res_stage("conv3", 64, 1),
    "conv4.0.0": conv(128, 64),
    **_res_stage("conv4", 128, 1),
    "conv_out.0": conv(128, 128, (3, 1, 1)),
}
RES_BNS = {
    (name[:-1] + "1" if name.endswith(".0") else name[:-5] + "bn" + name[-1]): shape[0]
    for name, shape in RES_CONVS.items()
}


def expected_state(convs: dict, bns: dict) -> dict[str, tuple[int, ...]]:
    out = {f"{name}.weight": shape for name, shape in convs.items()}
    for name, width in bns.items():
        for key in BN_KEYS:
            out[f"{name}.{key}"] = () if key == "num_batches_tracked" else (width,)
    return out


def n_params(convs: dict, bns: dict) -> int:
    conv_n = sum(torch.Size(s).numel() for s in convs.values())
    return conv_n + 2 * sum(bns.values())


@pytest.fixture(scope="module")
def kitti_voxels() -> tuple[torch.Tensor, torch.Tensor]:
    """A few hundred voxels in 2 KITTI-sized scenes: ``(N, 4)`` float, ``(N, 4)`` int32."""
    g = torch.Generator().manual_seed(0)
    n = 400
    coords = torch.stack(
        [
            torch.randint(0, 2, (n,), generator=g),
            torch.randint(0, KITTI_SHAPE[0], (n,), generator=g),
            torch.randint(0, KITTI_SHAPE[1], (n,), generator=g),
            torch.randint(0, KITTI_SHAPE[2], (n,), generator=g),
        ],
        dim=1,
    )
    # add a dense-ish clump so SubM layers see neighbours
    clump = torch.cartesian_prod(
        torch.tensor([0]), torch.arange(18, 22), torch.arange(100, 106), torch.arange(200, 206)
    )
    coords = torch.unique(torch.cat([coords, clump]), dim=0).int()
    return torch.randn(len(coords), C_IN, generator=g), coords


BACKBONES = {
    "plain": (VoxelBackBone8x, PLAIN_CONVS, PLAIN_BNS, 64),
    "res": (VoxelResBackBone8x, RES_CONVS, RES_BNS, 128),
}


@pytest.fixture(params=list(BACKBONES), ids=list(BACKBONES))
def spec(request):
    return BACKBONES[request.param]


def test_state_dict_names_and_shapes_match_openpcdet(spec):
    cls, convs, bns, _ = spec
    model = cls(C_IN, KITTI_SHAPE)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_state(convs, bns)
    assert sum(p.numel() for p in model.parameters()) == n_params(convs, bns)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            assert (m.eps, m.momentum) == (1e-3, 0.01)
        if hasattr(m, "indice_key"):
            assert m.bias is None


def test_parameter_counts_match_reference():
    # reference §1.4: plain ~0.711 M conv weights, residual ~2.69 M
    assert n_params(PLAIN_CONVS, {}) == 710_592
    assert n_params(PLAIN_CONVS, PLAIN_BNS) == 711_872
    assert n_params(RES_CONVS, {}) == 2_691_264


def test_kitti_output_shapes(spec, kitti_voxels):
    cls, _, _, c4 = spec
    feats, coords = kitti_voxels
    model = cls(C_IN, KITTI_SHAPE)
    out = model(feats, coords, batch_size=2)
    enc = out["encoded"]
    assert list(enc.spatial_shape) == [2, 200, 176]
    assert enc.features.shape[1] == model.num_point_features == 128
    assert out["encoded_stride"] == 8
    assert set(enc.indices[:, 0].tolist()) == {0, 1}
    expected = {
        "x_conv1": ([41, 1600, 1408], 16),
        "x_conv2": ([21, 800, 704], 32),
        "x_conv3": ([11, 400, 352], 64),
        "x_conv4": ([5, 200, 176], c4),
    }
    got = {k: (list(v.spatial_shape), v.features.shape[1]) for k, v in out["multi_scale"].items()}
    assert got == expected
    assert {k: c for k, (_, c) in expected.items()} == model.backbone_channels
    assert torch.equal(out["multi_scale"]["x_conv1"].indices, coords)


def test_forward_backward_on_cpu(spec, kitti_voxels):
    cls = spec[0]
    feats, coords = kitti_voxels
    model = cls(C_IN, KITTI_SHAPE).train()
    f = feats.clone().requires_grad_(True)
    model(f, coords, 2)["encoded"].features.square().mean().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.conv_input[0].weight.grad.abs().sum() > 0


def test_eval_forward_works_and_is_deterministic(spec, kitti_voxels):
    cls = spec[0]
    feats, coords = kitti_voxels
    model = cls(C_IN, KITTI_SHAPE).eval()
    with torch.no_grad():
        a = model(feats, coords, 2)["encoded"]
        b = model(feats, coords, 2)["encoded"]
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.features, b.features)


def test_export_openpcdet_checkpoint_round_trip(spec, kitti_voxels, tmp_path):
    cls = spec[0]
    feats, coords = kitti_voxels
    torch.manual_seed(1)
    model = cls(C_IN, KITTI_SHAPE)
    model(feats, coords, 2)  # one train step so BN running stats differ from init
    model.eval()

    sd = backbone_state_dict_for_openpcdet(model)
    assert all(k.startswith("backbone_3d.") for k in sd)
    assert sd["backbone_3d.conv_input.0.weight"].shape == (16, 3, 3, 3, C_IN)
    assert sd["backbone_3d.conv_out.0.weight"].shape[1:4] == (3, 1, 1)

    path = export_openpcdet_checkpoint(model, tmp_path / "ckpt" / "rmae.pth")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model_state", "epoch"} and ckpt["epoch"] == 0
    assert ckpt["model_state"].keys() == sd.keys()

    prefix = "backbone_3d."
    fresh = cls(C_IN, KITTI_SHAPE).eval()
    fresh.load_state_dict({k[len(prefix) :]: v for k, v in ckpt["model_state"].items()})
    with torch.no_grad():
        want = model(feats, coords, 2)["encoded"].features
        got = fresh(feats, coords, 2)["encoded"].features
    torch.testing.assert_close(got, want)


def test_input_validation():
    model = VoxelBackBone8x(C_IN, KITTI_SHAPE)
    coords = torch.zeros(3, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        model(torch.zeros(3, 5), coords, 1)
    with pytest.raises(ValueError, match="sparse_shape"):
        VoxelBackBone8x(C_IN, (1600, 1408))
