import numpy as np
import pytest
import torch

from maskfm.interop import load_point_mae_checkpoint, point_mae_filter_fn
from maskfm.methods.point_cmae import PointCMAE, double_mask_contrast
from maskfm.methods.point_mae import PointMAE
from maskfm.nn.chamfer import chamfer_l2
from maskfm.nn.point_transformer import TransformerWithPos

SMALL = dict(
    embed_dim=32,
    depth=2,
    num_heads=2,
    decoder_depth=1,
    decoder_num_heads=2,
    num_groups=16,
    group_size=8,
    pointnet_hidden=(16, 32, 64),
)


def clouds(b=4, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g)
    return x / x.norm(dim=-1).amax(dim=1)[:, None, None]


def test_point_mae_full_size_matches_released_parameter_count():
    model = PointMAE()
    assert sum(p.numel() for p in model.encoder.parameters()) == 21_825_024
    assert model.masker.ratio == 0.6


def test_point_mae_hides_int_06_g_and_loss_is_chamfer_on_hidden_patches():
    model = PointMAE()
    model.eval()
    pts = clouds(2, 1024)
    out = model({"points": pts}, torch.Generator().manual_seed(0))
    assert out.mask.sum(dim=1).tolist() == [38, 38]  # int(0.6 * 64)
    assert out.pred.shape == (2, 64, 32, 3)  # every patch, aligned with the mask
    assert not out.pred[~out.mask].any()  # Point-MAE predicts hidden patches only: zeros elsewhere
    hidden_pred, target = out.pred[out.mask].view(2, 38, 32, 3), out.extras["target"]
    assert torch.allclose(out.loss, chamfer_l2(hidden_pred.flatten(0, 1), target.flatten(0, 1)))
    # targets are the hidden patches, centred on their centres
    groups = model.group(pts)
    assert torch.allclose(target, groups.neighborhood[out.mask].view(2, 38, 32, 3))


def test_encoder_in_eval_mode_ignores_hidden_patches():
    model = PointMAE(**SMALL).eval()
    groups = model.group(clouds(2))
    mask = model.masker(model.layout(groups), torch.Generator().manual_seed(1))
    latent, _ = model.encoder(groups.neighborhood, groups.centers, mask)
    patches = groups.neighborhood.clone()
    patches[mask] = torch.randn_like(patches[mask])
    latent2, _ = model.encoder(patches, groups.centers, mask)
    assert latent.shape == (2, 16 - 10, 32)
    assert torch.allclose(latent, latent2, atol=1e-6)


def test_position_is_added_before_every_block():
    torch.manual_seed(0)
    transformer = TransformerWithPos(dim=8, depth=3, num_heads=2)
    x, pos = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    expected, h = [], x
    for block in transformer.blocks:
        expected.append(h + pos)
        h = block(h + pos)
    seen = []
    for block in transformer.blocks:
        block.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    out = transformer(x, pos)
    assert all(torch.allclose(a, b) for a, b in zip(seen, expected, strict=True))
    assert torch.allclose(out, h)


def test_double_mask_contrast_paper_and_released_definitions():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    both = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 0]]).bool()
    a = f1.numpy() / np.linalg.norm(f1.numpy(), axis=-1, keepdims=True)
    b = f2.numpy() / np.linalg.norm(f2.numpy(), axis=-1, keepdims=True)
    pairs = [(0, 0), (0, 2), (1, 3)]
    paper = np.mean([1 - a[s, i] @ b[s, i] for s, i in pairs])
    released = np.mean([1 - a[s, i] @ b[s, j] + 1e-8 for s, i in pairs for j in range(5)])
    assert double_mask_contrast(f1, f2, both, "paper").item() == pytest.approx(paper, rel=1e-5)
    assert double_mask_contrast(f1, f2, both, "released").item() == pytest.approx(
        released, rel=1e-5
    )
    assert double_mask_contrast(f1, f2, torch.zeros_like(both)).item() == 0.0
    with pytest.raises(ValueError, match="contrast must be one of"):
        double_mask_contrast(f1, f2, both, "diagonal")


def test_point_cmae_two_independent_masks_two_decoders_weighted_loss():
    model = PointCMAE(**SMALL)
    out = model({"points": clouds()}, torch.Generator().manual_seed(0))
    assert set(out.parts) == {"recon1", "recon2", "contrast"}
    p = out.parts
    assert torch.allclose(out.loss, 1000 * (p["recon1"] + p["recon2"]) + p["contrast"])
    ids1 = {id(p) for p in model.decoder.parameters()}
    assert ids1.isdisjoint(id(p) for p in model.decoder2.parameters())  # separate weights
    assert [p.shape for p in model.decoder.parameters()] == [
        p.shape for p in model.decoder2.parameters()
    ]
    assert not torch.equal(model.decoder.head[0].weight, model.decoder2.head[0].weight)
    out.loss.backward()
    assert model.decoder2.head[0].weight.grad.abs().sum() > 0
    assert model.cls_token2.grad is not None


def original_point_mae_state_dict(
    model: PointMAE, prefix: str = "module."
) -> dict[str, torch.Tensor]:
    """The released pretrain.pth key layout (reference §5.1), filled with random values."""
    enc = model.encoder
    keys = {f"MAE_encoder.{k}": v.shape for k, v in enc.state_dict().items()}
    keys["mask_token"] = torch.Size([1, 1, 384])
    for i in range(4):
        for k, v in model.decoder.blocks.blocks[i].state_dict().items():
            keys[f"MAE_decoder.blocks.{i}.{k}"] = v.shape
    keys.update(
        {
            "MAE_decoder.norm.weight": (384,),
            "MAE_decoder.norm.bias": (384,),
            "decoder_pos_embed.0.weight": (128, 3),
            "decoder_pos_embed.0.bias": (128,),
            "decoder_pos_embed.2.weight": (384, 128),
            "decoder_pos_embed.2.bias": (384,),
            "increase_dim.0.weight": (96, 384, 1),
            "increase_dim.0.bias": (96,),
        }
    )
    g = torch.Generator().manual_seed(3)
    sd = {
        prefix + k: (torch.randn(s, generator=g) if len(s) else torch.tensor(7))
        for k, s in keys.items()
    }
    for k in sd:
        if k.endswith("running_var"):  # a variance is positive
            sd[k] = sd[k].abs() + 0.5
    return sd


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_load_original_point_mae_checkpoint(tmp_path, prefix):
    model = PointMAE()
    sd = original_point_mae_state_dict(model, prefix)
    assert len(sd) == 209 and sum(k.startswith(prefix + "MAE_encoder.") for k in sd) == 156
    path = tmp_path / "pretrain.pth"
    torch.save({"base_model": sd, "epoch": 300, "metrics": {"acc": 0.0}}, path)
    report = load_point_mae_checkpoint(model, path)
    assert report.unexpected == [] and report.missing == [] and len(report.loaded) == 209
    own = model.state_dict()
    for key, value in point_mae_filter_fn(sd).items():
        assert torch.equal(own[key], value), key
    assert torch.equal(
        own["encoder.blocks.blocks.11.attn.qkv.weight"],
        sd[prefix + "MAE_encoder.blocks.blocks.11.attn.qkv.weight"],
    )


def test_load_reports_unexpected_keys_and_fails_on_shape_mismatch(tmp_path):
    model = PointMAE()
    sd = original_point_mae_state_dict(model)
    sd["module.MAE_encoder.cls_token1"] = torch.zeros(1, 1, 384)  # e.g. a Point-CMAE file
    torch.save({"base_model": sd}, tmp_path / "a.pth")
    report = load_point_mae_checkpoint(model, tmp_path / "a.pth")
    assert report.unexpected == ["encoder.cls_token1"]
    sd["module.MAE_encoder.encoder.second_conv.3.weight"] = torch.zeros(
        256, 512, 1
    )  # Point-BERT width
    torch.save({"base_model": sd}, tmp_path / "b.pth")
    with pytest.raises(
        ValueError,
        match=r"encoder.encoder.second_conv.3.weight: file \(256, 512, 1\) vs model \(384, 512, 1\)",
    ):
        load_point_mae_checkpoint(model, tmp_path / "b.pth")


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = PointMAE(**{**SMALL, "drop_path_rate": 0.0})
    pts = clouds(4, 256)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        out = model({"points": pts}, torch.Generator().manual_seed(0))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] <= 0.5 * losses[0], (losses[0], losses[-1])


def test_pointwise_minipointnet_equals_the_conv1d_formulation():
    from maskfm.nn.point_transformer import MiniPointNet

    torch.manual_seed(0)
    net = MiniPointNet(24, (8, 16, 32))
    patches = torch.randn(3, 5, 7, 3)

    def conv_reference(patches):  # the originals' (B, C, M) Conv1d layout
        b, g, m, _ = patches.shape
        x = net.first_conv(patches.reshape(b * g, m, 3).transpose(1, 2))
        x = torch.cat([x.amax(dim=2, keepdim=True).expand(-1, -1, m), x], dim=1)
        return net.second_conv(x).amax(dim=2).reshape(b, g, 24)

    for mode in (net.train, net.eval):
        mode()
        assert torch.allclose(net(patches), conv_reference(patches), atol=1e-5)
