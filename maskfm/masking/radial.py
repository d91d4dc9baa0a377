"""Radial masking (R-MAE): hide whole azimuth sectors around the LiDAR sensor.

The default is what the paper describes: the azimuth of each token is measured around the
sensor origin in metric coordinates, the circle is cut into ``sector_deg`` sectors, and for
each sample **independently** exactly ``int((1 - ratio) * non-empty sectors)`` sectors are
kept; every token in the other sectors is hidden. There is no fallback.

``mode="released"`` reproduces Radial_MAE's code (``radial_mae.py``) for comparison, bugs
included: the angle is ``atan2(x_idx, y_idx)`` on voxel-grid **indices** counted from the
grid's min corner (so angles only span [0°, 90°]), one draw of sectors is shared by the whole
batch, and when fewer than ``max(1, int(0.1 * N))`` voxels survive, ``0.1 * N`` uniformly
random voxels are kept instead.

``range_aware=True`` (Radial_MAE_ra, but in metres from the sensor as the paper intends):
inside each kept sector, voxels within 30 m / 30-50 m / beyond 50 m are kept with
probability ``1 - ratio``, ``1 - ratio + 0.2``, ``1 - ratio + 0.4``. With
``mode="released"`` the bands are measured as the released code does, in voxel-index units
from the grid corner (so on real grids every voxel falls in the far band).

Functional core on a flat voxel list (``positions (V, 3)``, ``batch_idx (V,)``) plus a
:class:`Masker` for any ``points3d`` :class:`TokenLayout`, ragged (voxels) or dense
(point patches).
"""

from __future__ import annotations

import math

import torch

from maskfm.masking.base import EXACT_COUNT, EXACT_SECTORS, EXPECTED_RATIO, Masker, mask_from_scores
from maskfm.masking.layout import POINTS_3D, TokenLayout

MODES = ("sensor", "released")
RANGE_BANDS_M = (30.0, 50.0)
RANGE_KEEP_BONUS = (0.0, 0.2, 0.4)


def azimuth_sectors(positions: torch.Tensor, sector_deg: float) -> torch.Tensor:
    """Sector index ``floor(azimuth / sector_deg)`` of each ``(x, y, ...)`` position around (0, 0)."""
    azimuth = torch.rad2deg(torch.atan2(positions[:, 1], positions[:, 0])) % 360.0
    num_sectors = math.ceil(360.0 / sector_deg)
    return (azimuth / sector_deg).floor().long().clamp_(max=num_sectors - 1)


def keep_random_sectors(
    sectors: torch.Tensor,
    group: torch.Tensor,
    num_groups: int,
    num_sectors: int,
    keep_ratio: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Per group (sample), keep ``int(keep_ratio * non-empty sectors)`` random non-empty sectors.

    Returns a ``(V,)`` bool tensor, True where the token's sector is kept.
    """
    dev = sectors.device
    occupied = torch.zeros(num_groups, num_sectors, dtype=torch.bool, device=dev)
    occupied[group, sectors] = True
    # floor of the exact product: (1 - 0.9) * 360 is 35.999... in floating point, 36 sectors meant
    n_keep = (occupied.sum(dim=1).double() * keep_ratio + 1e-9).floor().long()
    scores = torch.rand(num_groups, num_sectors, generator=generator, device=dev)
    scores = scores.masked_fill(~occupied, -1.0)
    rank = scores.argsort(dim=1, descending=True).argsort(dim=1)
    kept_sector = rank < n_keep[:, None]
    return kept_sector[group, sectors]


def radial_mask(
    positions: torch.Tensor,
    batch_idx: torch.Tensor,
    batch_size: int,
    ratio: float = 0.9,
    sector_deg: float = 1.0,
    generator: torch.Generator | None = None,
    mode: str = "sensor",
    range_aware: bool = False,
    grid_min: tuple[float, float] | None = None,
    voxel_size: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Hidden flags for a flat list of tokens.

    Args:
        positions: ``(V, 3)`` metric (x, y, z) of voxel centres, sensor at the origin.
        batch_idx: ``(V,)`` sample of each token, in ``[0, batch_size)``.
        ratio: fraction of non-empty sectors to hide.
        sector_deg: sector width in degrees (1° as released; must divide into whole
            degrees in ``released`` mode, which iterates ``range(0, 360, sector_deg)``).
        mode: ``sensor`` (default) or ``released`` (see the module docstring); ``released``
            needs ``grid_min`` (x_min, y_min of the point-cloud range) and ``voxel_size`` (x, y).
    Returns:
        ``(V,)`` bool, True = hidden.
    """
    if mode not in MODES:
        raise ValueError(f"radial mask mode must be one of {MODES}, got {mode!r}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    if sector_deg <= 0 or sector_deg > 360:
        raise ValueError(f"sector_deg must be in (0, 360], got {sector_deg}")
    keep_ratio = 1.0 - ratio
    num_sectors = math.ceil(360.0 / sector_deg)
    if mode == "sensor":
        sectors = azimuth_sectors(positions, sector_deg)
        kept = keep_random_sectors(
            sectors, batch_idx.long(), batch_size, num_sectors, keep_ratio, generator
        )
    else:
        kept = released_keep(
            positions, num_sectors, sector_deg, keep_ratio, generator, grid_min, voxel_size
        )
    if range_aware:
        if mode == "released":  # Radial_MAE_ra: voxel-index units from the grid corner (its bug)
            distance = grid_index_distance(positions, grid_min, voxel_size)
        else:
            distance = positions[:, :2].norm(dim=1)
        kept &= range_band_keep(distance, keep_ratio, generator)
    return ~kept


def released_keep(positions, num_sectors, sector_deg, keep_ratio, generator, grid_min, voxel_size):
    """Radial_MAE's kept set: grid-corner angles, one draw for the batch, 10 % random fallback."""
    if grid_min is None or voxel_size is None:
        raise ValueError("mode='released' needs grid_min=(x_min, y_min) and voxel_size=(vx, vy)")
    if float(sector_deg) != int(sector_deg):
        raise ValueError(
            f"mode='released' iterates whole degrees; sector_deg={sector_deg} is not an integer"
        )
    x_idx = ((positions[:, 0] - grid_min[0]) / voxel_size[0]).floor()
    y_idx = ((positions[:, 1] - grid_min[1]) / voxel_size[1]).floor()
    as_grid = torch.stack([y_idx, x_idx], dim=1)  # the code's atan2(voxel_coords[:, 3], [:, 2])
    sectors = azimuth_sectors(as_grid, sector_deg)
    one_group = torch.zeros_like(sectors)
    kept = keep_random_sectors(sectors, one_group, 1, num_sectors, keep_ratio, generator)
    n = positions.shape[0]
    if int(kept.sum()) < max(1, int(0.1 * n)):  # the silent fallback of the released code
        kept = torch.zeros(n, dtype=torch.bool, device=positions.device)
        pick = torch.randperm(n, generator=generator, device=positions.device)[: int(0.1 * n)]
        kept[pick] = True
    return kept


def grid_index_distance(positions: torch.Tensor, grid_min, voxel_size) -> torch.Tensor:
    """``sqrt(x_idx^2 + y_idx^2)`` in voxel-index units from the grid's min corner (released code)."""
    x_idx = ((positions[:, 0] - grid_min[0]) / voxel_size[0]).floor()
    y_idx = ((positions[:, 1] - grid_min[1]) / voxel_size[1]).floor()
    return torch.sqrt(x_idx**2 + y_idx**2)


def range_band_keep(distance: torch.Tensor, keep_ratio: float, generator) -> torch.Tensor:
    """Keep each token with probability ``keep_ratio + bonus(band)``; bands at 30 / 50 (metres,
    or index units in the released mode)."""
    band = torch.bucketize(distance, torch.tensor(RANGE_BANDS_M, device=distance.device))
    keep_p = (keep_ratio + torch.tensor(RANGE_KEEP_BONUS, device=distance.device)[band]).clamp(
        max=1.0
    )
    return torch.rand(distance.shape, generator=generator, device=distance.device) < keep_p


class RadialMasker(Masker):
    """R-MAE's radial masking as a :class:`Masker` over ``points3d`` layouts.

    Unlike token-count maskers, the exact quantity is the number of kept **sectors**
    (``int((1 - ratio) * non-empty sectors)`` per sample); the number of hidden tokens
    follows from how the tokens fill those sectors. On a layout with ``equal_counts`` (point
    patches under Point-MAE's visible-only encoder) it hides whole sectors in a random order
    until exactly ``round(ratio * valid)`` tokens are hidden, the last sector in part.
    """

    supported_kinds = (POINTS_3D,)

    def __init__(
        self,
        ratio: float = 0.9,
        sector_deg: float = 1.0,
        mode: str = "sensor",
        range_aware: bool = False,
        grid_min=None,
        voxel_size=None,
    ) -> None:
        super().__init__(ratio)
        if mode not in MODES:
            raise ValueError(f"radial mask mode must be one of {MODES}, got {mode!r}")
        self.sector_deg, self.mode, self.range_aware = float(sector_deg), mode, range_aware
        self.grid_min = tuple(grid_min) if grid_min is not None else None
        self.voxel_size = tuple(voxel_size) if voxel_size is not None else None

    takes_ragged = True  # the functional core works on the flat token list

    @property
    def guarantee(self) -> str:
        """Exact kept sectors per sample; in expectation only with range bands or the
        released mode (one draw per batch, random fallback)."""
        return EXPECTED_RATIO if self.range_aware or self.mode == "released" else EXACT_SECTORS

    def guarantee_for(self, layout: TokenLayout) -> str:
        return EXACT_COUNT if layout.equal_counts else self.guarantee

    def sector_scores(self, layout: TokenLayout, generator: torch.Generator | None) -> torch.Tensor:
        """``(B, N)``: one random score per (sample, sector), shared by the sector's tokens."""
        b, n, _ = layout.positions.shape
        sectors = azimuth_sectors(layout.positions.reshape(b * n, -1), self.sector_deg).view(b, n)
        per_sector = torch.rand(
            b, math.ceil(360.0 / self.sector_deg), generator=generator, device=layout.device
        )
        return per_sector.gather(1, sectors)

    def hide(self, layout: TokenLayout, generator: torch.Generator | None = None) -> torch.Tensor:
        if layout.equal_counts:  # whole sectors in random order, the last one in part
            if self.mode != "sensor" or self.range_aware:
                raise ValueError(
                    f"{self!r}: only mode=sensor without range bands can hide an equal number "
                    "of tokens per sample, which this method's encoder needs"
                )
            return mask_from_scores(
                self.sector_scores(layout, generator), layout.valid, self.ratio, generator
            )
        if layout.is_ragged:
            hidden = torch.zeros_like(layout.valid)
            valid = layout.valid
            hidden[valid] = radial_mask(
                layout.positions[valid],
                layout.ragged_batch_index[valid],
                layout.batch_size,
                self.ratio,
                self.sector_deg,
                generator,
                self.mode,
                self.range_aware,
                self.grid_min,
                self.voxel_size,
            )
            return hidden
        b, n, _ = layout.positions.shape
        batch_index = torch.arange(b, device=layout.device)[:, None].expand(b, n)
        flat = TokenLayout.ragged(layout.positions[layout.valid], batch_index[layout.valid], b)
        hidden = torch.zeros(b, n, dtype=torch.bool, device=layout.device)
        hidden[layout.valid] = self.hide(flat, generator)
        return hidden

    def __repr__(self) -> str:
        return (
            f"RadialMasker(ratio={self.ratio}, sector_deg={self.sector_deg}, mode={self.mode!r}, "
            f"range_aware={self.range_aware})"
        )
