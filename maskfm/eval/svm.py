"""Linear-SVM evaluation of frozen features (Point-BERT's protocol, pooling made explicit).

Features are the encoder's tokens of the un-masked input pooled over tokens; the pooling is
a config choice because third-party SVM numbers for Point-MAE differ by exactly this
(Point-M2AE sums max and mean; we default to concatenating them).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from maskfm.batch import to_device
from maskfm.eval.protocol import Protocol

POOLINGS = ("max_mean", "max", "mean", "max_plus_mean")


def pool_tokens(tokens: torch.Tensor, pooling: str = "max_mean") -> torch.Tensor:
    """``(B, N, C)`` tokens -> ``(B, C)`` or ``(B, 2C)`` features."""
    if pooling == "max_mean":
        return torch.cat([tokens.amax(dim=1), tokens.mean(dim=1)], dim=-1)
    if pooling == "max":
        return tokens.amax(dim=1)
    if pooling == "mean":
        return tokens.mean(dim=1)
    if pooling == "max_plus_mean":
        return tokens.amax(dim=1) + tokens.mean(dim=1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


@torch.no_grad()
def extract_features(
    model, loader, pooling: str, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and labels of every batch of ``loader``; ``model.features(batch)`` gives tokens."""
    feats, labels = [], []
    for batch in loader:
        batch = to_device(batch, device)
        feats.append(pool_tokens(model.features(batch), pooling).float().cpu())
        labels.append(batch["label"].cpu())
    features = torch.cat(feats)
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        raise FloatingPointError(
            f"the encoder produced non-finite features for {bad} of {len(features)} samples"
        )
    return features.numpy(), torch.cat(labels).numpy()


def linear_svm_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    C: float = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
    standardize: bool = False,
) -> dict[str, float]:
    """Fit ``LinearSVC(C)`` on train features; accuracy (in %) on train and test.

    The defaults are Point-BERT's ``LinearSVC()`` on raw features. ``standardize`` scales
    each feature to zero mean / unit variance on the train split first. Whether liblinear
    converged within ``max_iter`` is reported, not hidden in a warning.
    """
    svm = LinearSVC(C=C, max_iter=max_iter, random_state=seed)
    if standardize:
        svm = make_pipeline(StandardScaler(), svm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svm.fit(train_x, train_y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return {
        "accuracy": float(np.mean(svm.predict(test_x) == test_y) * 100),
        "train_accuracy": float(np.mean(svm.predict(train_x) == train_y) * 100),
        "converged": converged,
    }


@dataclass(kw_only=True)
class LinearSVM(Protocol):
    """``eval=svm``: linear SVM on pooled frozen features (point methods), test accuracy."""

    pooling: str = "max_mean"
    C: float = 1.0
    max_iter: int = 1000
    standardize: bool = False

    def __call__(self, model, device, datamodule) -> tuple[dict, str]:
        train_loader, test_loader = datamodule.eval_dataloaders()
        train_x, train_y = extract_features(model, train_loader, self.pooling, device)
        test_x, test_y = extract_features(model, test_loader, self.pooling, device)
        scores = linear_svm_accuracy(
            train_x,
            train_y,
            test_x,
            test_y,
            C=self.C,
            max_iter=self.max_iter,
            seed=self.seed,
            standardize=self.standardize,
        )
        result = {
            "eval": "svm",
            **scores,
            "num_train": len(train_y),
            "num_test": len(test_y),
            "feature_dim": int(train_x.shape[1]),
            "pooling": self.pooling,
            "C": self.C,
            "standardize": self.standardize,
            "data": type(datamodule).__name__,
            "dataset": getattr(datamodule, "dataset", None),
        }
        summary = (
            f"linear SVM on {result['dataset'] or result['data']}: test accuracy "
            f"{scores['accuracy']:.2f} % (train {scores['train_accuracy']:.2f} %), "
            f"{result['num_train']} train / {result['num_test']} test"
        )
        return result, summary
