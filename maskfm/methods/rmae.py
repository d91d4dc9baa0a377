"""R-MAE: radially masked occupancy pretraining for LiDAR (Tayebati et al., 2024).

As the released code: voxels of a sweep (MeanVFE features) are masked by whole azimuth
sectors (:class:`~maskfm.masking.RadialMasker`, 90 % of the sectors hidden), OpenPCDet's
``VoxelBackBone8x`` encodes the visible voxels with sparse convolutions, and a decoder
predicts the occupancy of the **full** voxel grid (every occupied voxel, hidden or
visible, is a positive), trained with binary cross-entropy over all cells.

``decoder="sparse"`` (default) reaches that objective without materialising the grid (see
:mod:`maskfm.nn.occupancy`); ``decoder="dense"`` is the released ``ConvTranspose3d`` decoder.

Coordinates: ``voxel_coords`` are ``[b, z, y, x]`` indices of a grid with
``point_cloud_range`` (x_min, y_min, z_min, x_max, y_max, z_max) and ``voxel_size`` (x, y, z);
the sensor is at the metric origin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch

from maskfm.masking import POINTS_3D, RadialMasker, TokenLayout
from maskfm.methods.contract import MaskedMethod
from maskfm.methods.output import MaskedModelingOutput
from maskfm.nn.occupancy import (
    DenseOccupancyDecoder,
    SparseOccupancyDecoder,
    densify,
    gather_coarse,
)

if TYPE_CHECKING:
    from maskfm.nn.sparse_backbone import VoxelBackBone8x, VoxelResBackBone8x

DECODERS = ("sparse", "dense")


def sparse_shape_of(point_cloud_range, voxel_size) -> tuple[int, int, int]:
    """OpenPCDet's ``grid_size[::-1] + [1, 0, 0]``: (z + 1, y, x) voxels."""
    lo, hi = torch.tensor(point_cloud_range[:3]), torch.tensor(point_cloud_range[3:])
    grid = ((hi - lo) / torch.tensor(voxel_size)).round().long().tolist()  # x, y, z
    return grid[2] + 1, grid[1], grid[0]


class RMAE(MaskedMethod):
    """Radial-MAE with a sparse voxel backbone.

    Args:
        masker: any masker of ``points3d`` layouts (it gets the voxels as a ragged layout
            of their metric centres); default radial, ratio 0.9, 1° sectors.
        in_channels: point features per voxel (x, y, z, intensity = 4).
        point_cloud_range, voxel_size: the voxel grid (KITTI's by default).
        backbone: ``plain`` (VoxelBackBone8x) or ``residual`` (VoxelResBackBone8x).
        decoder: ``sparse`` or ``dense`` (see the module docstring).
        empty_per_occupied: sparse decoder only, sampled empty cells per occupied voxel.
    """

    encoder: VoxelBackBone8x | VoxelResBackBone8x
    pc_min: torch.Tensor  # buffers, registered in __init__
    voxel: torch.Tensor

    def __init__(
        self,
        masker=None,
        in_channels: int = 4,
        point_cloud_range=(0.0, -40.0, -3.0, 70.4, 40.0, 1.0),
        voxel_size=(0.05, 0.05, 0.1),
        backbone: str = "plain",
        decoder: str = "sparse",
        empty_per_occupied: float = 2.0,
    ) -> None:
        super().__init__()
        from maskfm.nn.sparse_backbone import VoxelBackBone8x, VoxelResBackBone8x

        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.masker = masker if masker is not None else RadialMasker(0.9, sector_deg=1.0)
        if POINTS_3D not in self.masker.supported_kinds:
            raise ValueError(
                f"R-MAE masks voxels (a points3d layout); {self.masker!r} supports "
                f"{list(self.masker.supported_kinds)}"
            )
        self.register_buffer(
            "pc_min", torch.tensor(point_cloud_range[:3], dtype=torch.float32), persistent=False
        )
        self.register_buffer(
            "voxel", torch.tensor(voxel_size, dtype=torch.float32), persistent=False
        )
        self.sparse_shape = sparse_shape_of(point_cloud_range, voxel_size)
        backbones = {"plain": VoxelBackBone8x, "residual": VoxelResBackBone8x}
        if backbone not in backbones:
            raise ValueError(f"backbone must be one of {list(backbones)}, got {backbone!r}")
        self.encoder = backbones[backbone](in_channels, self.sparse_shape)
        self.decoder_kind = decoder
        self.decoder = (
            SparseOccupancyDecoder(
                self.encoder.num_point_features, empty_per_occupied=empty_per_occupied
            )
            if decoder == "sparse"
            else DenseOccupancyDecoder(self.encoder.num_point_features)
        )

    def voxel_centers(self, coords: torch.Tensor) -> torch.Tensor:
        """Metric ``(x, y, z)`` centres of ``[b, z, y, x]`` voxels, sensor at the origin."""
        zyx = coords[:, 1:].float()
        return self.pc_min + (zyx.flip(1) + 0.5) * self.voxel

    def layout(self, batch: dict) -> TokenLayout:
        """The voxels as a ragged ``points3d`` layout of their metric centres."""
        coords = batch["voxel_coords"]
        return TokenLayout.ragged(
            self.voxel_centers(coords), coords[:, 0], int(batch["batch_size"])
        )

    def encode(self, batch: dict, keep: torch.Tensor | None = None) -> dict:
        feats, coords = batch["voxel_features"], batch["voxel_coords"]
        if keep is not None:
            feats, coords = feats[keep], coords[keep]
        return self.encoder(feats, coords.int(), int(batch["batch_size"]))

    def forward(
        self, batch: dict, generator: torch.Generator | None = None
    ) -> MaskedModelingOutput:
        coords, batch_size = batch["voxel_coords"], int(batch["batch_size"])
        hidden = self.masker(self.layout(batch), generator)
        if (
            int((~hidden).sum()) < 2
        ):  # spconv asserts on an empty tensor, BatchNorm needs two values
            raise ValueError(
                f"R-MAE: {int((~hidden).sum())} of the batch's {len(coords)} voxels stay visible after masking "
                f"({self.masker!r}); the sparse backbone needs at least 2: the sweeps fill too few "
                "voxels (data.min_voxels) or sectors, or the ratio is too high"
            )
        encoded = self.encode(batch, keep=~hidden)["encoded"]
        args = (
            encoded.features,
            encoded.indices,
            tuple(encoded.spatial_shape),
            coords,
            batch_size,
            self.sparse_shape,
        )
        loss = (
            cast(SparseOccupancyDecoder, self.decoder).loss(*args, generator=generator)
            if self.decoder_kind == "sparse"
            else self.decoder.loss(*args)
        )
        return MaskedModelingOutput(
            loss=loss,
            parts={"occupancy": loss},
            mask=hidden,
            extras={"visible_fraction": (~hidden).float().mean()},
        )

    @torch.no_grad()
    def features(self, batch: dict) -> torch.Tensor:
        """``(V, C)`` per-voxel features of the un-masked sweep: every backbone stage, gathered
        at each input voxel (16 + 32 + 64 + 64 + 128 channels for VoxelBackBone8x)."""
        out = self.encode(batch)
        coords = batch["voxel_coords"].long()
        stages = [*out["multi_scale"].values(), out["encoded"]]
        return torch.cat(
            [
                gather_coarse(
                    s.features, s.indices, tuple(s.spatial_shape), coords, self.sparse_shape
                )[0]
                for s in stages
            ],
            dim=1,
        )

    media = ("clouds",)

    @torch.no_grad()
    def reconstruction_clouds(
        self, batch: dict, out: MaskedModelingOutput
    ) -> dict[str, torch.Tensor]:
        """Voxel centres ``(1, P, 3)`` of the first sweep: input, visible (kept by the mask) and
        reconstruction (the input voxels the decoder, reading the visible ones only, calls
        occupied; a picture of recall, empty cells are not drawn)."""
        coords, hidden = batch["voxel_coords"], out.mask
        assert hidden is not None, "R-MAE's forward sets mask"
        first = coords[:, 0] == 0
        encoded = self.encode(batch, keep=~hidden)["encoded"]
        args = (encoded.features, encoded.indices, tuple(encoded.spatial_shape))
        queries = coords[first].long()
        if self.decoder_kind == "sparse":
            logits = self.decoder(*args, queries, self.sparse_shape)
        else:
            dense = self.decoder(densify(*args, int(batch["batch_size"])))
            logits = dense[0, 0][tuple(queries[:, 1:].unbind(1))]
        centers = self.voxel_centers(coords)
        return {
            "input": centers[first][None],
            "visible": centers[first & ~hidden][None],
            "reconstruction": centers[first][logits > 0][None],
        }
