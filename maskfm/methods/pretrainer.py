"""``MaskedPretrainer``: the one LightningModule that trains every masked-modeling method.

The method (an ``nn.Module``) owns tokenizing, masking, encoding, decoding and the loss and
returns a :class:`MaskedModelingOutput`. This system owns everything around it: the steps,
logging of every named loss part, mask randomness, the optimiser and its schedule, and the
RNG state that makes a resumed run continue exactly.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from torch import nn

from maskfm.methods.contract import MaskedMethod, Progress
from maskfm.methods.output import MaskedModelingOutput
from maskfm.methods.schedule import warmup_cosine, warmup_linear

log = logging.getLogger(__name__)


def lr_scale_of(name: str, multipliers: dict[str, float] | None) -> float:
    """The lr multiplier of parameter ``name``: the longest matching name prefix wins."""
    best, scale = -1, 1.0
    for prefix, value in (multipliers or {}).items():
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, scale = len(prefix), float(value)
    return scale


def param_groups_weight_decay(
    model: nn.Module,
    weight_decay: float,
    skip: set[str] | frozenset[str] = frozenset(),
    lr_multipliers: dict[str, float] | None = None,
    decay_all: bool = False,
) -> list[dict]:
    """Parameter groups by (lr multiplier, decayed or not).

    Biases, norms and tokens (1-D tensors or names in ``skip``) get no weight decay unless
    ``decay_all``. ``lr_multipliers`` maps a module-name prefix (``"fusion"``,
    ``"mlm_head"``) to a factor on the lr; each group carries it as ``lr_scale``.
    """
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip or leaf in skip
        key = (lr_scale_of(name, lr_multipliers), decay_all or not no_decay)
        groups.setdefault(key, []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scale}
        for (scale, decayed), params in sorted(
            groups.items(), key=lambda kv: (kv[0][0], not kv[0][1])
        )
    ]


def batch_size_of(batch) -> int:
    """Samples in a batch dict: the first dimension of its first tensor."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError(f"cannot tell the batch size of a batch with keys {list(batch)}")


class MaskedPretrainer(L.LightningModule):
    """Trains ``model`` (a method) with AdamW-style optimisation and warm-up + cosine.

    Args:
        model: a method module with ``forward(batch, generator) -> MaskedModelingOutput``,
            an ``encoder`` attribute, and optionally ``no_weight_decay() -> set[str]``.
        optimizer: partial optimiser constructor taking ``(param_groups, lr=...)``; default
            AdamW with betas (0.9, 0.95).
        base_lr: learning rate for a batch of ``lr_reference_batch``; the actual lr is
            ``base_lr * batch_size * accumulate_grad_batches * world_size / lr_reference_batch``.
        lr_reference_batch: 256 as MAE (Goyal et al.); recipes published as an absolute lr
            at a batch size (Point-MAE: 1e-3 at 128) set that batch size here; 0 means
            ``base_lr`` is used as is, whatever the batch.
        schedule: ``cosine`` (linear warm-up + cosine, MAE), ``linear`` (linear warm-up, then
            linear decay to ``min_lr``: M3AE/ViLT's polynomial decay with power 1) or ``onecycle`` (OpenPCDet's
            ``adam_onecycle``: cosine up from ``lr / div_factor`` over ``pct_start`` of the
            steps, then down to ``lr / div_factor / final_div_factor``; beta1 cycled over
            ``momentum_range`` = (low, high) when given).
        decay_all: weight decay on every parameter, norms and biases included (OpenPCDet's
            ``bn_wd=True``).
        weight_decay: applied to weights only, never to biases, norms or tokens.
        min_lr: final lr of the cosine schedule (absolute, as MAE).
        warmup_epochs: linear warm-up length; ``warmup_steps`` overrides it, and
            ``warmup_fraction`` (of all steps, M3AE's 0.1) overrides both.
        lr_multipliers: module-name prefix -> factor on the lr (M3AE: heads and fusion x5).
        mask_seed: masks are drawn from a generator seeded by
            ``(mask_seed, epoch, batch_idx, rank)``, so they are reproducible and a resumed run
            draws the same masks an uninterrupted one would.
    """

    def __init__(
        self,
        model: MaskedMethod,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        base_lr: float = 1.5e-4,
        weight_decay: float = 0.05,
        min_lr: float = 0.0,
        warmup_epochs: float = 0.0,
        warmup_steps: int | None = None,
        mask_seed: int = 0,
        lr_reference_batch: int = 256,
        schedule: str = "cosine",
        pct_start: float = 0.4,
        div_factor: float = 10.0,
        final_div_factor: float = 1e4,
        momentum_range: tuple[float, float] | None = None,
        decay_all: bool = False,
        warmup_fraction: float | None = None,
        lr_multipliers: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer or partial(torch.optim.AdamW, betas=(0.9, 0.95))
        # plain tuples, not OmegaConf lists: checkpoints must load with weights_only=True
        momentum_range = (
            cast("tuple[float, float]", tuple(momentum_range))
            if momentum_range is not None
            else None
        )
        lr_multipliers = (
            {str(k): float(v) for k, v in lr_multipliers.items()} if lr_multipliers else None
        )
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.run_config: dict | None = None  # the resolved Hydra config, stored in checkpoints
        self.lr: float | None = None

    @property
    def encoder(self) -> nn.Module:
        """The pretrained encoder, for evaluation and export."""
        return self.model.encoder

    def forward(
        self, batch: dict, generator: torch.Generator | None = None
    ) -> MaskedModelingOutput:
        return self.model(batch, generator=generator)

    # -- steps ---------------------------------------------------------------------------
    def mask_generator(self, batch_idx: int, stage: str = "train") -> torch.Generator:
        stage_id = {"train": 0, "val": 1, "viz": 2}[stage]
        epoch = self.current_epoch if stage == "train" else 0
        seed = hash(
            (cast(Any, self.hparams).mask_seed, stage_id, epoch, batch_idx, self.global_rank)
        )
        return torch.Generator(device=self.device).manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)

    def progress(self, batch_idx: int) -> Progress:
        """Where training stands at this batch (for the method's per-step schedules)."""
        total = float(self.trainer.estimated_stepping_batches)
        per_epoch = self.trainer.num_training_batches
        fraction = batch_idx / per_epoch if per_epoch and math.isfinite(per_epoch) else 0.0
        return Progress(
            global_step=self.global_step,
            epoch=self.current_epoch,
            epoch_fraction=self.current_epoch + fraction,
            total_steps=int(total) if math.isfinite(total) else None,
        )

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self.model.on_train_step(self.progress(batch_idx))

    skip_nonfinite: bool = False  # trainer.skip_nonfinite, set by maskfm.train
    skipped_nonfinite: int = 0  # batches skipped by this process
    _drop_update: bool = False

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """The method's loss on ``batch``, with every named part logged.

        A NaN or inf loss on any rank stops training with a ``FloatingPointError`` that names
        the global step and the loss parts. It is raised before the backward pass, so the
        weights and the last checkpoint on disk are the last good ones. With
        ``skip_nonfinite`` (``trainer.skip_nonfinite=true``) every rank skips the batch
        instead (no update) and the running count is logged as ``train/skipped_nonfinite``.
        """
        out = self(batch, generator=self.mask_generator(batch_idx))
        nonfinite = self.nonfinite_on_any_rank(out.loss)
        loss = self.stop_or_skip(out) if nonfinite else out.loss
        if self.skip_nonfinite:
            self.log(
                "train/skipped_nonfinite",
                float(self.skipped_nonfinite),
                on_step=True,
                on_epoch=False,
                batch_size=1,
            )
        if not nonfinite:
            self.log_output("train", out, batch)
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.log("train/lr", lr, on_step=True, on_epoch=False, batch_size=1)
        return loss

    def on_train_end(self) -> None:
        """Log the last step's training metrics when the logging interval skipped it.

        Lightning writes to the loggers every ``log_every_n_steps``; a run that ends between two
        intervals (a 5-step job with the default 10) would otherwise leave no ``metrics.csv`` at
        all, or one that stops before its final step.
        """
        stepped = (
            self.trainer.fit_loop.epoch_loop._batches_that_stepped
        )  # steps taken, resumed ones included
        trainer = cast(Any, self.trainer)  # Lightning sets log_every_n_steps on it at runtime
        if stepped == 0 or stepped % trainer.log_every_n_steps == 0:
            return  # nothing trained, or Lightning logged this step itself
        metrics = {
            k: float(v)
            for k, v in self.trainer.callback_metrics.items()
            if k.startswith("train/") and v.numel() == 1
        }
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=stepped - 1)
            logger.save()

    def stop_or_skip(self, out: MaskedModelingOutput) -> torch.Tensor:
        """Raise for a non-finite loss, or (``skip_nonfinite``) return a stand-in loss.

        The stand-in puts every parameter in the graph with a zero gradient, so the backward
        pass and DDP's gradient all-reduce run on every rank as usual (Lightning refuses a
        ``None`` step under DDP); :meth:`on_before_optimizer_step` then drops the gradients,
        and the optimiser skips parameters without one: no update, momentum and weight decay
        included. With gradient accumulation the whole accumulated step is dropped.
        """
        loss, parts = float(out.loss.detach()), {k: float(v.detach()) for k, v in out.parts.items()}
        if math.isfinite(loss):  # another rank's loss is the bad one
            message = (
                f"non-finite training loss on another rank at global step {self.global_step} "
                f"(this rank: loss {loss}, parts {parts})"
            )
        else:
            message = f"non-finite training loss {loss} at global step {self.global_step} (loss parts: {parts})"
        if not self.skip_nonfinite:
            raise FloatingPointError(f"{message}; stopping before it corrupts the weights")
        self.skipped_nonfinite += 1
        self._drop_update = True
        log.warning(
            "%s; batch skipped (trainer.skip_nonfinite=true, %d so far)",
            message,
            self.skipped_nonfinite,
        )
        return cast(torch.Tensor, sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._drop_update:  # a skipped non-finite batch (see stop_or_skip)
            self._drop_update = False
            optimizer.zero_grad(set_to_none=True)

    @staticmethod
    def nonfinite_on_any_rank(loss: torch.Tensor) -> bool:
        """Whether ``loss`` is NaN/inf on this or any other rank (all ranks must agree to
        stop or skip together, or the others would wait forever in the gradient all-reduce)."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad)
        return bool(bad.item() > 0)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self(batch, generator=self.mask_generator(batch_idx, stage="val"))
        self.log_output("val", out, batch)

    def log_output(self, stage: str, out: MaskedModelingOutput, batch: dict) -> None:
        bs = batch_size_of(batch)
        on_step = stage == "train"
        kw: dict[str, Any] = dict(
            batch_size=bs, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step
        )
        self.log(f"{stage}/loss", out.loss.detach(), prog_bar=True, **kw)
        for name, value in {**out.parts, **out.metrics}.items():
            self.log(f"{stage}/{name}", value.detach(), **kw)
        if on_step and "skipped" in batch:
            self.log("data/skipped", batch["skipped"].sum().float(), reduce_fx="sum", **kw)

    # -- optimisation ----------------------------------------------------------------------
    def effective_batch_size(self) -> int:
        dm = cast(Any, self.trainer).datamodule  # set at runtime by Lightning
        if dm is None or not hasattr(dm, "batch_size"):
            raise ValueError("the lr scaling rule needs a datamodule with a `batch_size` attribute")
        return dm.batch_size * self.trainer.accumulate_grad_batches * self.trainer.world_size

    def build_optimizer(self, effective_batch_size: int) -> tuple[torch.optim.Optimizer, float]:
        """The optimiser training uses, and its lr: ``base_lr x effective batch / reference``
        (or ``base_lr`` when ``lr_reference_batch`` is 0), weight decay on weights only (or on
        everything with ``decay_all``), per-module lr multipliers. The benchmark times this one."""
        hp = cast(Any, self.hparams)
        if hp.lr_reference_batch:
            lr = hp.base_lr * effective_batch_size / hp.lr_reference_batch
            log.info(
                "lr = base_lr %.3g x effective batch %d / %d = %.3g",
                hp.base_lr,
                effective_batch_size,
                hp.lr_reference_batch,
                lr,
            )
        else:  # the recipe gives an absolute lr
            lr = hp.base_lr
            log.info("lr = %.3g (absolute, effective batch %d)", lr, effective_batch_size)
        groups = param_groups_weight_decay(
            self.model,
            hp.weight_decay,
            self.model.no_weight_decay(),
            hp.lr_multipliers,
            hp.decay_all,
        )
        for group in groups:
            group["lr"] = lr * group["lr_scale"]
        return self.optimizer_factory(groups, lr=lr), lr

    def configure_optimizers(self):
        hp = cast(Any, self.hparams)
        optimizer, self.lr = self.build_optimizer(self.effective_batch_size())
        groups = optimizer.param_groups

        total = float(self.trainer.estimated_stepping_batches)
        if hp.schedule == "onecycle":
            if not math.isfinite(total):
                raise ValueError(
                    "schedule=onecycle needs a finite run (set trainer.max_epochs or max_steps)"
                )
            low, high = hp.momentum_range or (None, None)
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[g["lr"] for g in groups],
                total_steps=int(total),
                pct_start=hp.pct_start,
                div_factor=hp.div_factor,
                final_div_factor=hp.final_div_factor,
                anneal_strategy="cos",
                cycle_momentum=hp.momentum_range is not None,
                base_momentum=low or 0.85,
                max_momentum=high or 0.95,
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
            }
        if hp.schedule not in ("cosine", "linear"):
            raise ValueError(
                f"schedule must be 'cosine', 'linear' or 'onecycle', got {hp.schedule!r}"
            )
        if hp.warmup_fraction is not None and math.isfinite(total):
            warmup = round(hp.warmup_fraction * total)
        elif hp.warmup_steps is not None:
            warmup = int(hp.warmup_steps)
        elif self.trainer.max_epochs and self.trainer.max_epochs > 0 and math.isfinite(total):
            warmup = round(hp.warmup_epochs * total / self.trainer.max_epochs)
        else:
            warmup = 0
        min_ratio = hp.min_lr / self.lr if self.lr > 0 else 0.0
        shape = warmup_cosine if hp.schedule == "cosine" else warmup_linear
        schedule = partial(shape, warmup_steps=warmup, total_steps=total, min_ratio=min_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # -- checkpoint extras -----------------------------------------------------------------
    # RNG states are stored as tensors and plain Python values, so checkpoints load with
    # torch.load(weights_only=True).
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["maskfm_config"] = self.run_config
        np_state = cast(
            "tuple[str, np.ndarray, int, int, float]", np.random.get_state()
        )  # legacy=True: a tuple
        np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np_state
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": [
                np_kind,
                torch.from_numpy(np_keys.astype(np.int64)),
                np_pos,
                np_has_gauss,
                np_gauss,
            ],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(states["python"])
        if states.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
