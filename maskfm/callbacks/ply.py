"""A coloured point cloud as a binary PLY file, for MeshLab, CloudCompare or open3d.

Written by hand (the format is a text header and a packed table) rather than with open3d, so
reconstructions are saved the same way with or without the optional extra.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

_VERTEX = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
)


def write_ply(path: str | os.PathLike, points: ArrayLike, colors: ArrayLike) -> Path:
    """Write ``points`` (N, 3) with ``colors`` uint8 (N, 3) or (3,) as ``binary_little_endian``
    PLY vertices ``x y z`` (float) ``red green blue`` (uchar)."""
    xyz = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    rgb = np.broadcast_to(np.asarray(colors, dtype=np.uint8), xyz.shape)
    table = np.empty(len(xyz), dtype=_VERTEX)
    for i, axis in enumerate("xyz"):
        table[axis] = xyz[:, i]
    for i, channel in enumerate(("red", "green", "blue")):
        table[channel] = rgb[:, i]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment written by maskfm\n"
        f"element vertex {len(xyz)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(table.tobytes())
    return path
