"""One feature vector per sample from an encoder's frozen tokens, shared by the k-NN and
linear-probe protocols.

Picture methods give ``(B, 1 + L, D)`` tokens with the CLS token first (the method contract);
point-patch methods give ``(B, G, D)`` without one. ``pooling``:

* ``auto``: ``cls`` for pictures, ``max_mean`` for point patches;
* ``cls``: the CLS token (MAE's linear probe, ``--cls_token``); pictures only;
* ``mean`` / ``max`` / ``max_mean`` / ``max_plus_mean``: :func:`maskfm.eval.svm.pool_tokens`
  over the patch tokens (the CLS token left out, as MAE's global pool does).
"""

from __future__ import annotations

import torch

from maskfm.batch import to_device
from maskfm.errors import UserInputError
from maskfm.eval.svm import POOLINGS, pool_tokens

FEATURE_POOLINGS = ("auto", "cls", *POOLINGS)


def check_pooling(pooling: str) -> None:
    if pooling not in FEATURE_POOLINGS:
        raise UserInputError(f"eval.pooling must be one of {FEATURE_POOLINGS}, got {pooling!r}")


def has_cls_token(batch: dict) -> bool:
    """Picture batches (an ``"image"`` key) give ViT tokens with the CLS token first."""
    return "image" in batch


def pool_features(tokens: torch.Tensor, pooling: str, cls_first: bool) -> torch.Tensor:
    """``(B, N, D)`` tokens -> ``(B, D)`` (or ``(B, 2D)`` for ``max_mean``) features."""
    check_pooling(pooling)
    if pooling == "auto":
        pooling = "cls" if cls_first else "max_mean"
    if pooling == "cls":
        if not cls_first:
            raise UserInputError(
                "eval.pooling=cls needs a CLS token, and these tokens (point patches) have "
                f"none; use one of {POOLINGS}"
            )
        return tokens[:, 0]
    return pool_tokens(tokens[:, 1:] if cls_first else tokens, pooling)


@torch.no_grad()
def features_of(model, batch: dict, pooling: str, device: torch.device) -> torch.Tensor:
    """Pooled float32 features of one batch (already on ``device`` or moved there)."""
    batch = to_device(batch, device)
    return pool_features(model.features(batch), pooling, has_cls_token(batch)).float()


@torch.no_grad()
def extract(model, loader, pooling: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(features ``(N, F)`` float32, labels ``(N,)`` int64) of every batch of ``loader``, on
    ``device``; non-finite features are an error."""
    feats, labels = [], []
    for batch in loader:
        if "label" not in batch:
            raise UserInputError(
                f"{type(loader.dataset).__name__}: the evaluation batches have no 'label' "
                "(this protocol needs labelled data)"
            )
        feats.append(features_of(model, batch, pooling, device))
        labels.append(torch.as_tensor(batch["label"]).to(device).long())
    features = torch.cat(feats)
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        raise FloatingPointError(
            f"the encoder produced non-finite features for {bad} of {len(features)} samples"
        )
    return features, torch.cat(labels)


def num_classes_of(datamodule, *labels: torch.Tensor) -> int:
    """The evaluation's class count: the datamodule's (``eval_num_classes`` or
    ``num_classes``), at least one more than the largest label seen."""
    declared = getattr(datamodule, "eval_num_classes", None) or getattr(
        datamodule, "num_classes", 0
    )
    seen = max((int(y.max()) + 1 for y in labels if y.numel()), default=0)
    return max(int(declared or 0), seen)
