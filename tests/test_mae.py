import torch

from maskfm.data.images import SyntheticShapes
from maskfm.masking import RandomMasker
from maskfm.methods.mae import MAE
from maskfm.nn.losses import masked_mse, normalize_patches
from maskfm.nn.pos_embed import sincos_2d
from maskfm.tokens.patchify import patchify, unpatchify


def tiny_mae(**kw):
    args = dict(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    return MAE(**{**args, **kw})


def test_patchify_unpatchify_round_trip_non_square_and_greyscale():
    for c in (1, 3):
        x = torch.randn(2, c, 24, 40)
        p = patchify(x, 8)
        assert p.shape == (2, 3 * 5, 64 * c)
        assert torch.equal(unpatchify(p, 8, (3, 5)), x)
    # patch (i, j) of the grid holds the pixels of that image block, (row, col, channel) order
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    p = patchify(x, 2)
    assert torch.equal(p[0, 1], x[0, :, 0:2, 2:4].permute(1, 2, 0).reshape(-1))


def test_norm_pix_loss_matches_hand_computation():
    target = torch.tensor([[[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 4.0]]])  # (1, 2, 4)
    pred = torch.zeros(1, 2, 4)
    mask = torch.tensor([[True, False]])
    # patch 0: mean 3, unbiased var (4+1+0+9)/3 = 14/3 -> normalised values (x-3)/sqrt(14/3+1e-6)
    # MSE against zeros = mean of squares = (4+1+0+9)/(14/3+1e-6)/4
    expected = (14 / (14 / 3 + 1e-6)) / 4
    loss = masked_mse(pred, normalize_patches(target), mask)
    assert abs(loss.item() - expected) < 1e-6
    # only the hidden patch counts
    loss_other = masked_mse(pred, normalize_patches(target), ~mask)
    assert abs(loss_other.item() - (16 / (16 / 3 + 1e-6)) / 4) < 1e-6


def test_sincos_table_matches_mae_layout():
    emb = sincos_2d(8, (2, 3), cls_token=True)
    assert emb.shape == (7, 8) and torch.equal(emb[0], torch.zeros(8))
    # first half encodes the column (MAE's meshgrid(w, h) order), second half the row
    col1_row0, col0_row1 = emb[1 + 1], emb[1 + 3]
    assert torch.allclose(col1_row0[4:], emb[1][4:]) and not torch.allclose(
        col1_row0[:4], emb[1][:4]
    )
    assert torch.allclose(col0_row1[:4], emb[1][:4]) and not torch.allclose(
        col0_row1[4:], emb[1][4:]
    )
    assert torch.allclose(emb[1], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]))


def test_mae_forward_shapes_and_loss_only_on_hidden_patches():
    model = tiny_mae()
    imgs = torch.randn(3, 3, 32, 32)
    out = model({"image": imgs}, torch.Generator().manual_seed(0))
    assert out.pred.shape == (3, 16, 192) and out.mask.sum(dim=1).tolist() == [12, 12, 12]
    assert set(out.parts) == {"recon"}
    target = normalize_patches(patchify(imgs, 8))
    per_patch = ((out.pred - target) ** 2).mean(-1)
    assert torch.allclose(out.loss, per_patch[out.mask].mean())
    out.loss.backward()
    assert model.encoder.cls_token.grad is not None
    assert model.encoder.pos_embed.grad is None  # fixed sin-cos positions


def test_encoder_sees_only_visible_patches():
    model = tiny_mae()
    imgs = torch.randn(2, 3, 32, 32)
    mask = RandomMasker(0.75)(model.layout(2, imgs.device), torch.Generator().manual_seed(0))
    latent, idx = model.forward_encoder(imgs, mask)
    assert latent.shape == (2, 1 + 4, 32)
    # changing the pixels of hidden patches does not change the latent
    patches = patchify(imgs, 8)
    patches[mask] = torch.randn_like(patches[mask])
    latent2, _ = model.forward_encoder(unpatchify(patches, 8, (4, 4)), mask)
    assert torch.allclose(latent, latent2, atol=1e-6)


def test_mae_sizes_and_encoder_keys_match_timm():
    import timm

    model = MAE(img_size=32, patch_size=16, size="small", decoder_depth=1)
    assert model.encoder.embed_dim == 384 and len(model.encoder.blocks) == 12
    vit = timm.create_model("vit_small_patch16_224", img_size=32, num_classes=0, pretrained=False)
    missing, unexpected = vit.load_state_dict(model.encoder.state_dict(), strict=False)
    assert not unexpected and not missing


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = tiny_mae(embed_dim=64, num_heads=4, decoder_embed_dim=64, decoder_num_heads=4)
    shapes = SyntheticShapes(4, img_size=32, seed=0)
    imgs = torch.stack([shapes[i]["image"] for i in range(4)])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        out = model({"image": imgs}, torch.Generator().manual_seed(0))  # same masks each step
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] <= 0.5 * losses[0], (losses[0], losses[-1])
