"""MAE's linear probe (main_linprobe.py) on a frozen encoder.

The head is ``BatchNorm1d(D, affine=False, eps=1e-6)`` then ``Linear(D, classes)`` (weight
trunc-normal std 0.01, bias 0), trained with LARS (weight decay 0), lr = blr x effective
batch / 256, linear warm-up then half-cycle cosine, set every iteration from the fractional
epoch, cross-entropy. Features are the CLS token by default (``pooling=auto``; MAE probes
with ``--cls_token``).

With ``augment=true`` (the paper's recipe, ``eval=linear_probe_mae``) every epoch encodes
freshly augmented train pictures (RandomResizedCrop + flip, the datamodule's
``augmented_train_dataloader``). Without augmentation the features are extracted once and
the head is trained on them in memory, which makes the CPU default take seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from maskfm.errors import UserInputError
from maskfm.eval.features import check_pooling, extract, features_of, num_classes_of
from maskfm.eval.lars import LARS
from maskfm.eval.protocol import Protocol


def probe_head(dim: int, num_classes: int, generator: torch.Generator | None = None) -> nn.Module:
    """MAE's probe head: parameter-free BatchNorm, then a Linear with weight ~ N(0, 0.01)
    truncated at +-2 (timm's trunc_normal_ with absolute bounds) and zero bias."""
    linear = nn.Linear(dim, num_classes)
    with torch.no_grad():
        linear.weight.copy_(
            nn.init.trunc_normal_(
                torch.empty(num_classes, dim), std=0.01, a=-2.0, b=2.0, generator=generator
            )
        )
        linear.bias.zero_()
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def lr_at(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """MAE's util/lr_sched.py: linear warm-up to ``lr``, then half-cycle cosine to ``min_lr``."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share (in %) of rows whose label is among the ``k`` highest logits."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(dim=1).float().mean() * 100)


@dataclass(kw_only=True)
class LinearProbe(Protocol):
    """``eval=linear_probe`` / ``eval=linear_probe_mae``: top-1 (and top-5 with more than 5
    classes) of a linear head on frozen features, on the held-out split."""

    pooling: str = "auto"
    augment: bool = False
    epochs: int = 90
    warmup_epochs: float = 10
    batch_size: int = 256  # per step (a micro-batch with accum_iter > 1)
    accum_iter: int = 1
    blr: float = 0.1  # lr = blr * batch_size * accum_iter / 256
    lr: float | None = None  # absolute lr; overrides blr
    min_lr: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    trust_coefficient: float = 0.001

    def __post_init__(self) -> None:
        check_pooling(self.pooling)
        if self.epochs < 1 or self.batch_size < 2 or self.accum_iter < 1:
            raise UserInputError(
                f"eval.epochs >= 1, eval.batch_size >= 2 (BatchNorm) and eval.accum_iter >= 1 "
                f"needed; got {self.epochs}, {self.batch_size}, {self.accum_iter}"
            )

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.accum_iter

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else self.blr * self.effective_batch_size / 256

    def fit(
        self, head: nn.Module, batches, steps_per_epoch: int, device: torch.device
    ) -> dict[str, float]:
        """Train ``head`` for ``epochs``; ``batches(epoch)`` yields (features, labels) pairs.
        Returns the last epoch's mean loss and running top-1 (train mode)."""
        if steps_per_epoch < self.accum_iter:
            raise UserInputError(
                f"the train split gives {steps_per_epoch} batches of {self.batch_size} per "
                f"epoch, fewer than eval.accum_iter={self.accum_iter}, so the head would never "
                "step; lower eval.accum_iter or eval.batch_size"
            )
        head.to(device).train()
        opt = LARS(
            head.parameters(),
            lr=self.base_lr,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            trust_coefficient=self.trust_coefficient,
        )
        loss_sum = correct = seen = 0.0
        for epoch in range(self.epochs):
            loss_sum = correct = seen = 0.0
            opt.zero_grad(set_to_none=True)
            for it, (x, y) in enumerate(batches(epoch)):
                if it % self.accum_iter == 0:  # as MAE's engine: set once per optimiser step
                    lr = lr_at(
                        epoch + it / steps_per_epoch,
                        self.base_lr,
                        self.min_lr,
                        self.warmup_epochs,
                        self.epochs,
                    )
                    for group in opt.param_groups:
                        group["lr"] = lr
                logits = head(x)
                loss = F.cross_entropy(logits, y)
                (loss / self.accum_iter).backward()
                if (it + 1) % self.accum_iter == 0:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"linear probe loss is {loss.item()} at epoch {epoch}")
                loss_sum += loss.item() * len(y)
                correct += float((logits.argmax(1) == y).sum())
                seen += len(y)
        return {"train_loss": loss_sum / max(seen, 1), "train_top1": 100 * correct / max(seen, 1)}

    def __call__(self, model, device, datamodule) -> tuple[dict, str]:
        generator = torch.Generator().manual_seed(self.seed)
        train_loader, test_loader = datamodule.eval_dataloaders()
        test_x, test_y = extract(model, test_loader, self.pooling, device)
        if self.augment:
            if not hasattr(datamodule, "augmented_train_dataloader"):
                raise UserInputError(
                    f"eval.augment=true needs augmented labelled training pictures, and "
                    f"{type(datamodule).__name__} has no augmented_train_dataloader(); "
                    "use eval.augment=false"
                )
            loader = datamodule.augmented_train_dataloader(self.batch_size)
            num_train, steps = len(loader.dataset), len(loader)
            num_classes = num_classes_of(datamodule, test_y)

            def batches(epoch: int):
                for batch in loader:
                    x = features_of(model, batch, self.pooling, device)
                    yield x, torch.as_tensor(batch["label"]).to(device).long()

        else:
            train_x, train_y = extract(model, train_loader, self.pooling, device)
            num_train, num_classes = len(train_y), num_classes_of(datamodule, train_y, test_y)
            size = min(self.batch_size, num_train)
            if size < 2:
                raise UserInputError(f"the linear probe needs >= 2 train samples, got {num_train}")
            steps = num_train // size  # drop_last, as MAE's train loader

            def batches(epoch: int):
                order = torch.randperm(num_train, generator=generator).to(device)
                for it in range(steps):
                    idx = order[it * size : (it + 1) * size]
                    yield train_x[idx], train_y[idx]

        head = probe_head(test_x.shape[1], num_classes, generator)
        fitted = self.fit(head, batches, steps, device)
        head.eval()
        with torch.no_grad():
            logits = head(test_x)
        result = {
            "eval": "linear_probe",
            "top1": topk_accuracy(logits, test_y, 1),
            **({"top5": topk_accuracy(logits, test_y, 5)} if num_classes > 5 else {}),
            **fitted,
            "num_train": num_train,
            "num_test": len(test_y),
            "num_classes": num_classes,
            "feature_dim": int(test_x.shape[1]),
            "pooling": self.pooling,
            "augment": self.augment,
            "epochs": self.epochs,
            "effective_batch_size": self.effective_batch_size,
            "lr": self.base_lr,
            "data": type(datamodule).__name__,
            "dataset": getattr(datamodule, "dataset", None),
        }
        top5 = f", top-5 {result['top5']:.2f} %" if "top5" in result else ""
        summary = (
            f"linear probe on {result['dataset'] or result['data']}: top-1 {result['top1']:.2f} %"
            f"{top5} ({num_train} train / {len(test_y)} held-out, {self.epochs} epochs"
            f"{', augmented' if self.augment else ''})"
        )
        return result, summary
