"""Pictures of what the model reconstructs, written during training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import save_image

from maskfm.batch import to_device
from maskfm.callbacks.ply import write_ply
from maskfm.callbacks.render import render_panels


class ReconstructionPictures(Callback):
    """Every ``every_n_steps`` (and at the end), save ``dirpath/step_XXXXXX.png``.

    The picture is a grid with one row per example and one column per panel the method
    returns from ``reconstruction_panels(batch, output)`` (for images: input, masked input,
    reconstruction, reconstruction with the visible patches pasted back) or, for point
    clouds, from ``reconstruction_clouds(batch, output)`` drawn by ``callbacks.render``. With a
    W&B logger the picture is logged too, and point clouds also as 3D objects. The examples are
    the first ``num_examples`` of the first validation batch, masked with a fixed seed, so
    successive pictures are comparable.

    Point clouds are also saved (``ply=True``) as ``dirpath/step_XXXXXX/<example>_<panel>.ply``
    (e.g. ``0_input.ply``, ``0_visible.ply``, ``0_reconstruction.ply``), each panel in its
    colour of :data:`PANEL_COLOURS`, in the same coordinates: open them together in MeshLab or
    CloudCompare to compare.
    """

    def __init__(
        self, dirpath: str, every_n_steps: int = 100, num_examples: int = 8, ply: bool = True
    ) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = int(every_n_steps)
        self.num_examples = int(num_examples)
        self.ply = bool(ply)
        self._batch: dict | None = None
        self.saved: list[Path] = []
        self.saved_clouds: list[Path] = []

    def _examples(self, trainer) -> dict | None:
        if self._batch is None:
            dm = trainer.datamodule
            loader = dm.val_dataloader() if dm is not None else None
            if loader is None:
                return None
            batch = next(iter(loader))
            if "batch_size" in batch:  # a flat list of every sample's voxels (LiDAR): keep whole
                self._batch = batch
            else:
                self._batch = {
                    k: v[: self.num_examples] if isinstance(v, torch.Tensor) else v
                    for k, v in batch.items()
                }
        return self._batch

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step % self.every_n_steps == 0 and step > 0:
            self.save(trainer, pl_module)

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        if not self.saved or self.saved[-1].name != self.filename(trainer.global_step):
            self.save(trainer, pl_module)

    @staticmethod
    def filename(step: int) -> str:
        return f"step_{step:06d}.png"

    def save(self, trainer, pl_module) -> Path | None:
        model = pl_module.model
        if not model.media:  # the method draws nothing
            return None
        examples = self._examples(trainer)
        if examples is None:
            return None
        batch = to_device(examples, pl_module.device)
        was_training = model.training
        model.eval()
        clouds = None
        with torch.no_grad():
            out = pl_module(batch, generator=pl_module.mask_generator(0, stage="viz"))
            if "panels" in model.media:
                panels = {
                    k: self.to_unit_range(trainer, v)
                    for k, v in model.reconstruction_panels(batch, out).items()
                }
            else:  # point clouds: drawn headless
                clouds = model.reconstruction_clouds(batch, out)
                panels = render_panels(clouds)
        model.train(was_training)
        grid = torch.stack(list(panels.values()), dim=1)
        path = self.dirpath / self.filename(trainer.global_step)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid.flatten(0, 1), path, nrow=len(panels), padding=2, pad_value=1.0)
        self.saved.append(path)
        if clouds and self.ply:
            self.saved_clouds += self.write_clouds(path.with_suffix(""), clouds)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self.log_to_wandb(logger, trainer.global_step, path, list(panels), clouds)
        return path

    @staticmethod
    def write_clouds(folder: Path, clouds: dict[str, torch.Tensor]) -> list[Path]:
        """Each example's panels as coloured ``folder/<example>_<panel>.ply`` files."""
        return [
            write_ply(folder / f"{i}_{name}.ply", c, PANEL_COLOURS[k % len(PANEL_COLOURS)])
            for k, (name, batch) in enumerate(clouds.items())
            for i, c in enumerate(batch.detach().float().cpu().numpy())
        ]

    @staticmethod
    def log_to_wandb(
        logger: WandbLogger,
        step: int,
        picture: Path,
        names: list[str],
        clouds: dict[str, torch.Tensor] | None,
    ) -> None:
        """The picture as ``reconstructions``; for point clouds also each panel of the first
        example as a coloured ``wandb.Object3D`` (``reconstructions_3d/<panel>``), to turn
        around in the browser."""
        logger.log_image(
            key="reconstructions", images=[str(picture)], step=step, caption=[" | ".join(names)]
        )
        if clouds:
            import wandb

            objects: dict[str, Any] = {
                f"reconstructions_3d/{name}": wandb.Object3D(coloured_points(cloud[0], i))
                for i, (name, cloud) in enumerate(clouds.items())
            }
            logger.log_metrics(objects, step=step)

    @staticmethod
    def to_unit_range(trainer, images: torch.Tensor) -> torch.Tensor:
        """Undo the datamodule's normalisation (``mean``/``std`` attributes) and clamp to [0, 1]."""
        dm = trainer.datamodule
        mean, std = getattr(dm, "mean", None), getattr(dm, "std", None)
        images = images.detach().float().cpu()
        if mean is not None and std is not None:
            images = images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(
                1, -1, 1, 1
            )
        return images.clamp(0, 1)


# input grey, visible blue, reconstruction orange, then more
PANEL_COLOURS = ((150, 150, 150), (40, 90, 200), (230, 120, 30), (60, 160, 80), (170, 60, 160))


def coloured_points(points: torch.Tensor, index: int) -> np.ndarray:
    """``(P, 3)`` -> ``(P, 6)`` ``[x, y, z, r, g, b]`` (W&B's point format), one colour per panel."""
    xyz = points.detach().float().cpu().numpy()
    rgb = np.broadcast_to(
        np.asarray(PANEL_COLOURS[index % len(PANEL_COLOURS)], dtype=np.float32), xyz.shape
    )
    return np.concatenate([xyz, rgb], axis=1)
