import math

import pytest
import torch

from maskfm.masking import RadialMasker, TokenLayout, radial_mask
from maskfm.masking.radial import azimuth_sectors


def ring_cloud(b=3, n=3600, radius=20.0, seed=0):
    """Points all around the sensor (every 1° sector occupied), at metric positions."""
    g = torch.Generator().manual_seed(seed)
    az = torch.rand(b, n, generator=g) * 2 * math.pi
    r = radius * (0.2 + torch.rand(b, n, generator=g))
    return torch.stack([r * az.cos(), r * az.sin(), torch.randn(b, n, generator=g) * 0.5], dim=-1)


def test_exact_number_of_kept_sectors_per_sample_and_whole_sectors_hidden():
    pts = ring_cloud()
    masker = RadialMasker(ratio=0.9, sector_deg=1.0)
    hidden = masker(TokenLayout.points(pts), torch.Generator().manual_seed(0))
    for b in range(3):
        sectors = azimuth_sectors(pts[b], 1.0)
        occupied = sectors.unique()
        kept_sectors = sectors[~hidden[b]].unique()
        assert len(occupied) == 360 and len(kept_sectors) == 36  # 10 % of 360, not float 35.99
        # every token of a kept sector is visible, every token of another sector hidden
        in_kept = torch.isin(sectors, kept_sectors)
        assert torch.equal(~hidden[b], in_kept)
    # sectors are drawn per sample, not once for the batch
    kept = [set(azimuth_sectors(pts[b], 1.0)[~hidden[b]].tolist()) for b in range(3)]
    assert kept[0] != kept[1] and kept[1] != kept[2]


def test_sectors_follow_sensor_azimuth_in_metres():
    # two points at the same azimuth but different range share a sector; opposite ones do not
    pos = torch.tensor([[10.0, 0.1, 0.0], [50.0, 0.5, 0.0], [-10.0, -0.1, 0.0]])
    sec = azimuth_sectors(pos, 5.0)
    assert sec[0] == sec[1] and sec[0] != sec[2] and sec[2] == 36
    hidden = radial_mask(
        pos,
        torch.zeros(3, dtype=torch.long),
        1,
        ratio=0.5,
        sector_deg=5.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert (
        hidden[0] == hidden[1] and hidden[0] != hidden[2]
    )  # 2 occupied sectors, keep int(0.5 * 2) = 1


def test_sector_width_and_reproducibility():
    pts = ring_cloud(b=2)
    layout = TokenLayout.points(pts)
    m = RadialMasker(ratio=0.8, sector_deg=10.0)
    a, b = m(layout, torch.Generator().manual_seed(5)), m(layout, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    for s in range(2):
        assert len(azimuth_sectors(pts[s], 10.0)[~a[s]].unique()) == int(0.2 * 36) == 7


def test_padding_is_never_hidden():
    pts = ring_cloud(b=2, n=500)
    valid = torch.ones(2, 500, dtype=torch.bool)
    valid[1, 400:] = False
    hidden = RadialMasker(0.9)(TokenLayout.points(pts, valid), torch.Generator().manual_seed(0))
    assert not hidden[~valid].any()


def test_released_mode_reproduces_grid_corner_angles_shared_draw_and_fallback():
    pts = ring_cloud(b=2, n=2000)
    # KITTI grid: min corner (0, -40), voxel 0.05 m; the cloud is centred on the sensor
    flat, batch = pts.reshape(-1, 3), torch.arange(2).repeat_interleave(2000)
    x_idx = ((flat[:, 0] - 0.0) / 0.05).floor()
    y_idx = ((flat[:, 1] + 40.0) / 0.05).floor()
    angle = torch.rad2deg(torch.atan2(x_idx, y_idx)) % 360
    hidden = radial_mask(
        flat,
        batch,
        2,
        ratio=0.8,
        sector_deg=1,
        generator=torch.Generator().manual_seed(1),
        mode="released",
        grid_min=(0.0, -40.0),
        voxel_size=(0.05, 0.05),
    )
    kept_angles = angle[~hidden]
    if len(kept_angles) != int(0.1 * len(flat)):  # not the fallback: whole grid-corner wedges
        sectors = angle.floor()
        kept_sectors = sectors[~hidden].unique()
        assert torch.equal(~hidden, torch.isin(sectors, kept_sectors))  # shared across the batch
        assert len(kept_sectors) == int(0.2 * len(sectors.unique()))
    # with ratio 0.99 almost nothing survives: the fallback keeps exactly int(0.1 * N) voxels
    hidden = radial_mask(
        flat,
        batch,
        2,
        ratio=0.99,
        sector_deg=1,
        generator=torch.Generator().manual_seed(1),
        mode="released",
        grid_min=(0.0, -40.0),
        voxel_size=(0.05, 0.05),
    )
    assert int((~hidden).sum()) == int(0.1 * len(flat))
    with pytest.raises(ValueError, match="needs grid_min"):
        radial_mask(flat, batch, 2, mode="released")


def test_range_aware_keeps_more_far_voxels_measured_in_metres():
    g = torch.Generator().manual_seed(0)
    n = 20000
    az = torch.rand(n, generator=g) * 2 * math.pi
    r = torch.rand(n, generator=g) * 80
    pos = torch.stack([r * az.cos(), r * az.sin(), torch.zeros(n)], dim=1)
    hidden = radial_mask(
        pos,
        torch.zeros(n, dtype=torch.long),
        1,
        ratio=0.0,
        sector_deg=1.0,
        generator=g,
        range_aware=True,
    )
    near, mid, far = r <= 30, (r > 30) & (r <= 50), r > 50
    # ratio 0: every sector kept; inside, keep probability 1.0 / 1.2 / 1.4 clamps to all kept
    assert not hidden.any()
    hidden = radial_mask(
        pos,
        torch.zeros(n, dtype=torch.long),
        1,
        ratio=0.9,
        sector_deg=360.0,
        generator=g,
        range_aware=True,
    )  # one sector: int(0.1 * 1) = 0 kept ...
    assert hidden.all()
    hidden = radial_mask(
        pos,
        torch.zeros(n, dtype=torch.long),
        1,
        ratio=0.5,
        sector_deg=180.0,
        generator=torch.Generator().manual_seed(2),
        range_aware=True,
    )
    in_kept_half = ~hidden.clone()
    kept_sector = azimuth_sectors(pos, 180.0)[in_kept_half].unique()
    sel = azimuth_sectors(pos, 180.0) == kept_sector[0]
    rates = [float((~hidden[sel & band]).float().mean()) for band in (near, mid, far)]
    assert rates[0] == pytest.approx(0.5, abs=0.05) and rates[1] == pytest.approx(0.7, abs=0.05)
    assert rates[2] == pytest.approx(0.9, abs=0.05)


def test_radial_masker_refuses_grid_layouts_and_bad_arguments():
    with pytest.raises(ValueError, match="RadialMasker cannot mask a 'grid2d' layout"):
        RadialMasker(0.9)(TokenLayout.grid(1, 4, 4))
    with pytest.raises(ValueError, match="mode must be one of"):
        RadialMasker(0.9, mode="corner")
    with pytest.raises(ValueError, match="sector_deg"):
        radial_mask(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), 1, sector_deg=0)


def test_released_range_bands_are_in_grid_index_units():
    from maskfm.masking.radial import grid_index_distance

    pos = torch.tensor([[1.0, 0.0, 0.0], [20.0, 0.0, 0.0]])
    # KITTI grid corner (0, -40), 0.05 m voxels: y_idx = 800 for y = 0, so both are "far" (>50)
    d = grid_index_distance(pos, (0.0, -40.0), (0.05, 0.05))
    assert d.min() > 50 and torch.allclose(
        d, torch.tensor([(20**2 + 800**2) ** 0.5, (400**2 + 800**2) ** 0.5])
    )
