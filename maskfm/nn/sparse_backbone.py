"""OpenPCDet-compatible sparse 3-D voxel encoders (``VoxelBackBone8x``, ``VoxelResBackBone8x``).

Written from the layer table in the maskfm LiDAR reference (§1.4); module and parameter names equal
OpenPCDet's ``pcdet/models/backbones_3d/spconv_backbone.py`` so that
:func:`backbone_state_dict_for_openpcdet` loads into an OpenPCDet detector (``backbone_3d.*``).

Input: ``voxel_features (N, C_in)`` and ``voxel_coords (N, 4)`` int ``[b, z, y, x]`` on a grid
``sparse_shape = (Z, Y, X)`` (OpenPCDet: ``grid_size[::-1] + [1, 0, 0]``, KITTI ``(41, 1600, 1408)``).

============  ========================================  =========  ==========================
stage         layers (kernel 3 unless noted)            channels   stride, KITTI grid (z,y,x)
============  ========================================  =========  ==========================
conv_input    SubM + BN + ReLU (subm1)                  C_in->16   1, 41x1600x1408
conv1         SubM block (subm1)                        16         1
conv2         SparseConv s2 p1 (spconv2) + 2 SubM       16->32     2, 21x800x704
conv3         SparseConv s2 p1 (spconv3) + 2 SubM       32->64     4, 11x400x352
conv4         SparseConv s2 p(0,1,1) (spconv4) + 2 SubM 64->64     8, 5x200x176
conv_out      SparseConv k(3,1,1) s(2,1,1) p0 + BN+ReLU 64->128    8, 2x200x176
============  ========================================  =========  ==========================

The residual variant replaces the SubM blocks by two :class:`SparseBasicBlock` per stage and widens
conv4/conv_out to 128. BatchNorm1d(eps=1e-3, momentum=0.01) everywhere.

All convolutions are ``bias=False`` -- including the residual blocks, where OpenPCDet defaults to
``bias=True`` (``USE_BIAS``): biased sparse convs fail in eval mode on spconv's CPU build, and the
missing ``convN.M.conv{1,2}.bias`` keys are simply left at init by OpenPCDet's non-strict loader.

Conv weights use spconv >= 2.2's KRSC layout ``[out, kz, ky, kx, in]``, which is what OpenPCDet
with spconv 2.x expects (its loader transposes only legacy 1.x checkpoints).

spconv is imported when a backbone is built, not when this module is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from maskfm.nn.sparse_compat import (
    replace_feature,
    require_spconv,
    sparse_conv3d,
    sparse_tensor,
    subm_conv3d,
)

if TYPE_CHECKING:
    from spconv.pytorch import SparseConvTensor

__all__ = [
    "SparseBasicBlock",
    "VoxelBackBone8x",
    "VoxelResBackBone8x",
    "backbone_state_dict_for_openpcdet",
    "export_openpcdet_checkpoint",
]

OPENPCDET_PREFIX = "backbone_3d."


def _norm(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


def _conv_bn_relu(conv: nn.Module, out_channels: int) -> nn.Module:
    """OpenPCDet's ``post_act_block``: ``SparseSequential(conv, BN, ReLU)`` (keys ``0.*``, ``1.*``)."""
    spconv = require_spconv()
    return spconv.SparseSequential(conv, _norm(out_channels), nn.ReLU())


def _subm_block(in_ch: int, out_ch: int, key: str, algo: Any) -> nn.Module:
    return _conv_bn_relu(subm_conv3d(in_ch, out_ch, 3, indice_key=key, algo=algo), out_ch)


def _down_block(
    in_ch: int, out_ch: int, padding: int | Sequence[int], key: str, algo: Any
) -> nn.Module:
    conv = sparse_conv3d(in_ch, out_ch, 3, stride=2, padding=padding, indice_key=key, algo=algo)
    return _conv_bn_relu(conv, out_ch)


def _conv_out(channels_in: int, last_pad: int, algo: Any) -> nn.Module:
    conv = sparse_conv3d(
        channels_in,
        128,
        (3, 1, 1),
        stride=(2, 1, 1),
        padding=last_pad,
        indice_key="spconv_down2",
        algo=algo,
    )
    return _conv_bn_relu(conv, 128)


class SparseBasicBlock(nn.Module):
    """Residual block: ``relu(x + BN(SubM(relu(BN(SubM(x))))))``, same sites, C -> C.

    Keys ``conv1.weight``, ``bn1.*``, ``conv2.weight``, ``bn2.*`` as in OpenPCDet (no conv bias).
    Takes and returns a ``SparseConvTensor``; put it in ``nn.Sequential`` (not ``SparseSequential``,
    which would hand it bare features).
    """

    def __init__(self, channels: int, indice_key: str, algo: Any = "auto"):
        super().__init__()
        self.conv1 = subm_conv3d(channels, channels, 3, indice_key=indice_key, algo=algo)
        self.bn1 = _norm(channels)
        self.relu = nn.ReLU()
        self.conv2 = subm_conv3d(channels, channels, 3, indice_key=indice_key, algo=algo)
        self.bn2 = _norm(channels)

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        if isinstance(x, torch.Tensor):
            raise TypeError("SparseBasicBlock takes a SparseConvTensor, not a dense tensor")
        out = self.conv1(x)
        out = replace_feature(out, self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        out = replace_feature(out, self.bn2(out.features) + x.features)
        return replace_feature(out, self.relu(out.features))


class _Backbone8x(nn.Module):
    """Shared input handling and forward of the two 8x encoders."""

    num_point_features = 128
    conv_input: nn.Module
    conv1: nn.Module
    conv2: nn.Module
    conv3: nn.Module
    conv4: nn.Module
    conv_out: nn.Module

    def __init__(self, in_channels: int, sparse_shape: Sequence[int]):
        super().__init__()
        require_spconv()
        shape = tuple(int(s) for s in sparse_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(
                f"sparse_shape must be 3 positive ints (z, y, x), got {sparse_shape!r}"
            )
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.in_channels = int(in_channels)
        self.sparse_shape = shape

    def forward(
        self, voxel_features: torch.Tensor, voxel_coords: torch.Tensor, batch_size: int
    ) -> dict[str, Any]:
        """Encode one batch of voxels.

        Args:
            voxel_features: ``(N, C_in)`` float.
            voxel_coords: ``(N, 4)`` int ``[b, z, y, x]`` inside ``sparse_shape``.
            batch_size: ``B``.

        Returns:
            ``encoded``: SparseConvTensor, 128 channels, stride 8 (KITTI grid ``2x200x176``);
            ``encoded_stride``: 8; ``multi_scale``: ``x_conv1..x_conv4`` SparseConvTensors
            (16/32/64/64 or 16/32/64/128 channels); ``multi_scale_strides``: 1, 2, 4, 8.
        """
        if voxel_features.dim() != 2 or voxel_features.shape[1] != self.in_channels:
            raise ValueError(
                f"voxel_features must be (N, {self.in_channels}), got {tuple(voxel_features.shape)}"
            )
        x = sparse_tensor(voxel_features, voxel_coords, self.sparse_shape, batch_size)
        x = self.conv_input(x)
        x_conv1 = self.conv1(x)
        x_conv2 = self.conv2(x_conv1)
        x_conv3 = self.conv3(x_conv2)
        x_conv4 = self.conv4(x_conv3)
        return {
            "encoded": self.conv_out(x_conv4),
            "encoded_stride": 8,
            "multi_scale": {
                "x_conv1": x_conv1,
                "x_conv2": x_conv2,
                "x_conv3": x_conv3,
                "x_conv4": x_conv4,
            },
            "multi_scale_strides": {"x_conv1": 1, "x_conv2": 2, "x_conv3": 4, "x_conv4": 8},
        }


class VoxelBackBone8x(_Backbone8x):
    """OpenPCDet ``VoxelBackBone8x`` (the R-MAE / Occupancy-MAE encoder); ~0.71 M conv weights.

    Args:
        in_channels: voxel feature size ``C_in`` (4 for KITTI x,y,z,intensity after MeanVFE).
        sparse_shape: grid ``(Z, Y, X)``.
        last_pad: conv_out z-padding (OpenPCDet ``model_cfg.last_pad``, default 0).
        algo: spconv ``ConvAlgo`` or ``"auto"`` (:func:`~maskfm.nn.sparse_compat.default_algo`).
    """

    def __init__(
        self, in_channels: int, sparse_shape: Sequence[int], last_pad: int = 0, algo: Any = "auto"
    ):
        super().__init__(in_channels, sparse_shape)
        spconv = require_spconv()
        self.conv_input = _subm_block(in_channels, 16, "subm1", algo)
        self.conv1 = spconv.SparseSequential(_subm_block(16, 16, "subm1", algo))
        self.conv2 = spconv.SparseSequential(
            _down_block(16, 32, 1, "spconv2", algo),
            _subm_block(32, 32, "subm2", algo),
            _subm_block(32, 32, "subm2", algo),
        )
        self.conv3 = spconv.SparseSequential(
            _down_block(32, 64, 1, "spconv3", algo),
            _subm_block(64, 64, "subm3", algo),
            _subm_block(64, 64, "subm3", algo),
        )
        self.conv4 = spconv.SparseSequential(
            _down_block(64, 64, (0, 1, 1), "spconv4", algo),
            _subm_block(64, 64, "subm4", algo),
            _subm_block(64, 64, "subm4", algo),
        )
        self.conv_out = _conv_out(64, last_pad, algo)
        self.backbone_channels = {"x_conv1": 16, "x_conv2": 32, "x_conv3": 64, "x_conv4": 64}


class VoxelResBackBone8x(_Backbone8x):
    """OpenPCDet ``VoxelResBackBone8x`` with bias-free residual blocks; ~2.69 M conv weights.

    Same arguments as :class:`VoxelBackBone8x`. Keys ``conv1.0.conv1.weight``, ``conv1.0.bn1.*``,
    ``conv2.0.0.weight`` (strided conv), ``conv2.1.conv1.weight`` ...; no ``*.bias`` on convs.
    """

    def __init__(
        self, in_channels: int, sparse_shape: Sequence[int], last_pad: int = 0, algo: Any = "auto"
    ):
        super().__init__(in_channels, sparse_shape)

        def res(channels: int, key: str) -> SparseBasicBlock:
            return SparseBasicBlock(channels, key, algo)

        self.conv_input = _subm_block(in_channels, 16, "subm1", algo)
        self.conv1 = nn.Sequential(res(16, "res1"), res(16, "res1"))
        self.conv2 = nn.Sequential(
            _down_block(16, 32, 1, "spconv2", algo), res(32, "res2"), res(32, "res2")
        )
        self.conv3 = nn.Sequential(
            _down_block(32, 64, 1, "spconv3", algo), res(64, "res3"), res(64, "res3")
        )
        self.conv4 = nn.Sequential(
            _down_block(64, 128, (0, 1, 1), "spconv4", algo), res(128, "res4"), res(128, "res4")
        )
        self.conv_out = _conv_out(128, last_pad, algo)
        self.backbone_channels = {"x_conv1": 16, "x_conv2": 32, "x_conv3": 64, "x_conv4": 128}


def backbone_state_dict_for_openpcdet(
    backbone: nn.Module, prefix: str = OPENPCDET_PREFIX
) -> dict[str, torch.Tensor]:
    """``backbone.state_dict()`` with keys ``backbone_3d.<name>``, detached CPU copies.

    Conv weights stay in spconv 2.x KRSC layout ``[out, kz, ky, kx, in]``.
    """
    return {prefix + k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}


def export_openpcdet_checkpoint(backbone: nn.Module, path: str | Path) -> Path:
    """Write ``{"model_state": backbone_3d.* state dict, "epoch": 0}`` for OpenPCDet's
    ``--pretrained_model`` (loaded non-strictly by key and shape). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state": backbone_state_dict_for_openpcdet(backbone), "epoch": 0}, path)
    return path
