import pytest
import torch
import torch.nn.functional as F

from maskfm.nn.occupancy import DenseOccupancyDecoder, SparseOccupancyDecoder, densify


def random_sparse(batch=2, shape=(2, 3, 3), n=6, channels=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    coords = torch.stack(
        [
            torch.stack([torch.full((), b), *(torch.randint(0, s, (), generator=g) for s in shape)])
            for b in range(batch)
            for _ in range(n)
        ]
    )
    coords = torch.unique(coords, dim=0)
    return torch.randn(len(coords), channels, generator=g), coords


def test_dense_decoder_reaches_the_full_kitti_like_grid():
    dec = DenseOccupancyDecoder(in_channels=8)
    out = dec(torch.randn(1, 8, 2, 25, 22))
    assert out.shape == (1, 1, 41, 200, 176)  # z 2->4->14->41, y/x x8


def test_densify_places_features():
    feats, coords = random_sparse()
    dense = densify(feats, coords, (2, 3, 3), 2)
    b, z, y, x = coords[0]
    assert torch.equal(dense[b, :, z, y, x], feats[0])
    assert dense.abs().sum() == pytest.approx(feats.abs().sum().item(), rel=1e-5)


def test_sparse_loss_is_an_unbiased_estimate_of_the_dense_mean():
    torch.manual_seed(0)
    full_shape = (6, 12, 12)
    feats, coords = random_sparse(shape=(2, 3, 3))
    g = torch.Generator().manual_seed(1)
    occupied = torch.unique(
        torch.cat(
            [
                torch.randint(0, 2, (40, 1), generator=g),
                torch.randint(0, 6, (40, 1), generator=g),
                torch.randint(0, 12, (40, 2), generator=g),
            ],
            dim=1,
        ),
        dim=0,
    )
    dec = SparseOccupancyDecoder(in_channels=8, hidden=16, empty_per_occupied=4.0)
    # exact dense objective with the same predictor: logits at every cell of both samples
    grid = torch.stack(
        torch.meshgrid(*(torch.arange(s) for s in (2, *full_shape)), indexing="ij"), -1
    ).reshape(-1, 4)
    with torch.no_grad():
        logits = dec(feats, coords, (2, 3, 3), grid, full_shape)
        target = torch.zeros(len(grid))
        key = ((grid[:, 0] * 6 + grid[:, 1]) * 12 + grid[:, 2]) * 12 + grid[:, 3]
        okey = ((occupied[:, 0] * 6 + occupied[:, 1]) * 12 + occupied[:, 2]) * 12 + occupied[:, 3]
        target[torch.isin(key, okey)] = 1
        exact = F.binary_cross_entropy_with_logits(logits, target).item()
        estimates = [
            dec.loss(
                feats, coords, (2, 3, 3), occupied, 2, full_shape, torch.Generator().manual_seed(s)
            ).item()
            for s in range(200)
        ]
    mean = sum(estimates) / len(estimates)
    assert mean == pytest.approx(exact, rel=0.02)


def test_sparse_loss_backpropagates_to_encoder_features():
    feats, coords = random_sparse()
    feats.requires_grad_(True)
    occupied = coords.clone()
    occupied[:, 1:] *= 2
    dec = SparseOccupancyDecoder(in_channels=8)
    loss = dec.loss(
        feats, coords, (2, 3, 3), occupied, 2, (4, 6, 6), torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert torch.isfinite(loss) and feats.grad.abs().sum() > 0
