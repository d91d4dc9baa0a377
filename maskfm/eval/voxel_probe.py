"""Per-voxel linear probe on frozen LiDAR encoder features.

Each voxel's label is the majority label of its points; a linear classifier on standardised
frozen features is trained on (a sample of) the train sweeps' voxels and scored on every
voxel of the test sweeps: accuracy and mean IoU over the classes present.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from maskfm.batch import to_device
from maskfm.eval.protocol import Protocol


def voxel_labels(
    point_labels: torch.Tensor, point_voxel_idx: torch.Tensor, num_voxels: int, num_classes: int
) -> torch.Tensor:
    """Majority label per voxel from ``(P,)`` point labels and ``(P,)`` voxel indices (-1 = none)."""
    keep = point_voxel_idx >= 0
    counts = torch.zeros(num_voxels, num_classes, dtype=torch.long, device=point_labels.device)
    counts.index_put_(
        (point_voxel_idx[keep].long(), point_labels[keep].long()),
        torch.ones(int(keep.sum()), dtype=torch.long, device=point_labels.device),
        accumulate=True,
    )
    return counts.argmax(dim=1)


@torch.no_grad()
def extract_voxel_features(
    model, loader, num_classes: int, device, max_per_sweep: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features and majority labels of the voxels of every batch (optionally subsampled)."""
    g = torch.Generator().manual_seed(seed)
    feats, labels = [], []
    for batch in loader:
        batch = to_device(batch, device)
        x = model.features(batch).float().cpu()
        y = voxel_labels(batch["point_labels"], batch["point_voxel_idx"], len(x), num_classes).cpu()
        if max_per_sweep is not None:
            b = batch["voxel_coords"][:, 0].cpu()
            pick = torch.cat(
                [
                    torch.nonzero(b == i).flatten()[
                        torch.randperm(int((b == i).sum()), generator=g)[:max_per_sweep]
                    ]
                    for i in range(int(batch["batch_size"]))
                ]
            )
            x, y = x[pick], y[pick]
        feats.append(x)
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def train_linear_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-2,
    seed: int = 0,
):
    """Full-batch Adam on a standardised linear classifier; returns (predict function)."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    layer = torch.nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    xs = (x - mean) / std
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(layer(xs), y).backward()
        opt.step()
    return lambda z: layer((z - mean) / std).argmax(dim=1)


def segmentation_scores(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, class_names=None
) -> dict:
    """Accuracy and IoU per class (classes absent from both prediction and target are skipped)."""
    ious = {}
    for c in range(num_classes):
        inter = int(((pred == c) & (target == c)).sum())
        union = int(((pred == c) | (target == c)).sum())
        if union:
            ious[class_names[c] if class_names else str(c)] = 100.0 * inter / union
    return {
        "accuracy": float((pred == target).float().mean() * 100),
        "miou": float(np.mean(list(ious.values()))) if ious else 0.0,
        "iou": ious,
    }


@dataclass(kw_only=True)
class VoxelProbe(Protocol):
    """``eval=voxel_probe``: linear per-voxel probe of frozen features (LiDAR methods)."""

    max_voxels_per_sweep: int = 2000
    epochs: int = 200
    lr: float = 0.01
    num_classes: int = 4  # used when the datamodule has no class_names

    def __call__(self, model, device, datamodule) -> tuple[dict, str]:
        train_loader, test_loader = datamodule.eval_dataloaders()
        names = list(getattr(datamodule, "class_names", [])) or None
        k = len(names) if names else int(self.num_classes)
        x, y = extract_voxel_features(
            model, train_loader, k, device, self.max_voxels_per_sweep, self.seed
        )
        predict = train_linear_probe(x, y, k, self.epochs, self.lr, self.seed)
        xt, yt = extract_voxel_features(model, test_loader, k, device)
        scores = segmentation_scores(predict(xt), yt, k, names)
        result = {
            "eval": "voxel_probe",
            **scores,
            "num_train_voxels": len(y),
            "num_test_voxels": len(yt),
            "feature_dim": int(x.shape[1]),
        }
        summary = (
            f"voxel probe: test mIoU {scores['miou']:.2f} %, accuracy {scores['accuracy']:.2f} % "
            f"({len(y)} train / {len(yt)} test voxels)"
        )
        return result, summary
