"""Weighted k-NN classification of frozen features (InstDisc / DINO's protocol).

Features are L2-normalised; each held-out sample takes its ``k`` most cosine-similar train
samples, each neighbour votes for its own class with weight ``exp(similarity / T)``, and the
class with the largest summed vote is the prediction (DINO's ``knn_classifier``: k=20,
T=0.07).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maskfm.errors import UserInputError
from maskfm.eval.features import check_pooling, extract, num_classes_of
from maskfm.eval.linear_probe import topk_accuracy
from maskfm.eval.protocol import Protocol


@torch.no_grad()
def knn_votes(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """``(N_test, num_classes)`` summed votes ``sum_{j in kNN(i)} exp(cos(x_i, x_j) / T)``
    per class of the neighbours (``k`` clipped to the train size)."""
    train = F.normalize(train_x.float(), dim=1)
    k = min(k, len(train))
    votes = []
    for start in range(0, len(test_x), chunk):
        query = F.normalize(test_x[start : start + chunk].float(), dim=1)
        sim, idx = (query @ train.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        out = torch.zeros(len(query), num_classes, device=query.device, dtype=weights.dtype)
        votes.append(out.scatter_add_(1, train_y[idx], weights))
    return torch.cat(votes)


@dataclass(kw_only=True)
class KNN(Protocol):
    """``eval=knn``: top-1 (and top-5 with more than 5 classes) of a temperature-weighted
    cosine k-NN on frozen features, the train split as memory, on the held-out split."""

    k: int = 20
    temperature: float = 0.07
    pooling: str = "auto"

    def __post_init__(self) -> None:
        check_pooling(self.pooling)
        if self.k < 1 or self.temperature <= 0:
            raise UserInputError(
                f"eval.k must be >= 1 and eval.temperature > 0; got {self.k}, {self.temperature}"
            )

    def __call__(self, model, device, datamodule) -> tuple[dict, str]:
        train_loader, test_loader = datamodule.eval_dataloaders()
        train_x, train_y = extract(model, train_loader, self.pooling, device)
        test_x, test_y = extract(model, test_loader, self.pooling, device)
        num_classes = num_classes_of(datamodule, train_y, test_y)
        votes = knn_votes(train_x, train_y, test_x, num_classes, self.k, self.temperature)
        result = {
            "eval": "knn",
            "top1": topk_accuracy(votes, test_y, 1),
            **({"top5": topk_accuracy(votes, test_y, 5)} if num_classes > 5 else {}),
            "k": min(self.k, len(train_y)),
            "temperature": self.temperature,
            "pooling": self.pooling,
            "num_train": len(train_y),
            "num_test": len(test_y),
            "num_classes": num_classes,
            "feature_dim": int(train_x.shape[1]),
            "data": type(datamodule).__name__,
            "dataset": getattr(datamodule, "dataset", None),
        }
        top5 = f", top-5 {result['top5']:.2f} %" if "top5" in result else ""
        summary = (
            f"{result['k']}-NN (T={self.temperature}) on {result['dataset'] or result['data']}: "
            f"top-1 {result['top1']:.2f} %{top5} ({len(train_y)} train / {len(test_y)} held-out)"
        )
        return result, summary
