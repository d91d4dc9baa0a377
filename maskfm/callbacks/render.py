"""Pictures of reconstructions: pixel panels for image methods, and headless pictures of
point clouds (no OpenGL): an oblique orthographic projection.

Points are drawn back to front, shaded by depth, so a reconstruction can be looked at in
a PNG (or W&B) on machines where open3d cannot render offscreen.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from maskfm.tokens.patchify import patchify, unpatchify


def view_rotation(azimuth_deg: float = 30.0, elevation_deg: float = 20.0) -> np.ndarray:
    """Rotation taking world coordinates to a camera looking down -z with +y up."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    return rx @ rz


def render_cloud(
    points: np.ndarray, size: int = 128, radius: float = 1.0, color=(40, 90, 200)
) -> np.ndarray:
    """``points: (P, 3)`` within ``radius`` of the origin -> ``(3, size, size)`` float image in [0, 1]."""
    image = np.ones((size, size, 3), dtype=np.float32)
    if len(points) == 0:
        return image.transpose(2, 0, 1)
    p = points @ view_rotation().T
    order = np.argsort(p[:, 2])  # far (small z) first, near points drawn on top
    p = p[order]
    px = np.clip(((p[:, 0] / radius + 1) / 2 * (size - 2)).astype(int), 0, size - 2)
    py = np.clip(((1 - (p[:, 1] / radius + 1) / 2) * (size - 2)).astype(int), 0, size - 2)
    depth = (p[:, 2] / radius + 1) / 2  # 0 far .. 1 near
    shade = (0.35 + 0.65 * np.clip(depth, 0, 1))[:, None]
    rgb = 1 - shade * (1 - np.asarray(color, dtype=np.float32) / 255)
    for dy in (0, 1):  # 2x2 dots
        for dx in (0, 1):
            image[py + dy, px + dx] = rgb
    return image.transpose(2, 0, 1)


def render_panels(clouds: dict[str, torch.Tensor], size: int = 128) -> dict[str, torch.Tensor]:
    """``{name: (B, P, 3)}`` clouds -> ``{name: (B, 3, size, size)}`` pictures.

    All panels share one scale (the largest radius of the first panel's clouds) so the
    reconstruction is drawn at the same size as the input.
    """
    first = next(iter(clouds.values()))
    radius = float(first.norm(dim=-1).amax().clamp_min(1e-6)) * 1.05
    return {
        name: torch.from_numpy(
            np.stack([render_cloud(c.cpu().numpy(), size, radius) for c in batch])
        )
        for name, batch in clouds.items()
    }


@torch.no_grad()
def pixel_reconstruction_panels(
    imgs: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    grid_size: tuple[int, int],
    norm_pix_loss: bool,
) -> dict[str, torch.Tensor]:
    """Pictures in input space, each ``(B, C, H, W)``: input, masked input, reconstruction.

    With ``norm_pix_loss`` the prediction is mapped back to pixels with each hidden patch's
    own mean and std (as MAE's demo does), which leaks those two numbers per patch.
    """
    target = patchify(imgs, patch_size)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
        pred = pred * std + mean
    hidden = mask[..., None]
    masked = torch.where(hidden, torch.zeros_like(target), target)
    pasted = torch.where(hidden, pred, target)
    to_img = lambda x: unpatchify(x, patch_size, grid_size)  # noqa: E731
    return {
        "input": imgs,
        "masked": to_img(masked),
        "reconstruction": to_img(pred),
        "reconstruction+visible": to_img(pasted),
    }
