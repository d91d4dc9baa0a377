"""BatchNorm synchronised across processes on any device, CPU (gloo) included.

``torch.nn.SyncBatchNorm`` refuses CPU tensors, so ``trainer.sync_batchnorm=true`` only works
on GPUs. CPU data-parallel runs (``trainer=ddp_cpu``: tests, CI) use this plugin instead, so a
2-process run normalises with the statistics of the global batch, exactly as one process
would on the whole batch (``tests/test_ddp.py`` checks this for every method with BatchNorm).

The statistics are sums carried by an ``all_reduce`` with a backward that all-reduces the
gradients, so each rank's inputs receive the gradient of every rank's loss through the
shared mean and variance, as with ``SyncBatchNorm``.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.distributed as dist
from lightning.pytorch.plugins import LayerSync
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _SumOverRanks(torch.autograd.Function):
    """``all_reduce(SUM)`` with a gradient: every rank's output depends on every rank's
    input, so the input's gradient is the sum over ranks of the output's gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(x)


def _syncing(module: _BatchNorm) -> bool:
    return (
        module.training
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size() > 1
    )


class AllReduceBatchNorm(_BatchNorm):
    """``BatchNorm{1,2,3}d`` whose training statistics are those of the batch on all ranks.

    Same parameters and buffers (names and shapes) as ``nn.BatchNorm*d``, so checkpoints
    written while it is in place load into the plain layers. Outside a process group of more
    than one rank, and in eval mode, it is exactly ``nn.BatchNorm*d``.
    """

    _original_class: type[nn.Module]  # the layer's class before CPUSyncBatchNorm.apply

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected (N, C, ...) input with at least 2 dims, got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _syncing(self):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()  # statistics in float32 whatever the input precision, as torch's BatchNorm
        # Two passes (mean, then centred squares) rather than E[x²] - E[x]²: no cancellation.
        count = xf.new_full((1,), x.numel() / x.shape[1])
        summed = all_reduce(torch.cat([xf.sum(dims), count]))
        total = summed[-1]
        mean = summed[:-1] / total
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / total
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), total.detach())
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(
        self, mean: torch.Tensor, var: torch.Tensor, total: torch.Tensor
    ) -> None:
        assert self.num_batches_tracked is not None  # track_running_stats: the buffers exist
        assert self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * total / (total - 1).clamp(min=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


_ModuleT = TypeVar("_ModuleT", bound=nn.Module)


def _swap(module: nn.Module, make) -> nn.Module:
    """Replace every submodule ``m`` (and ``module`` itself) for which ``make(m)`` is not None."""
    replaced = make(module)
    if replaced is not None:
        return replaced
    for name, child in module.named_children():
        module.add_module(name, _swap(child, make))
    return module


def _converted(bn: nn.Module, cls: type[_ModuleT]) -> _ModuleT:
    """``bn`` as an instance of ``cls``: the same Parameter and buffer objects and settings."""
    new = cls.__new__(cls)
    new.__dict__ = bn.__dict__.copy()
    return new


class CPUSyncBatchNorm(LayerSync):
    """Lightning plugin: ``trainer.plugins=[CPUSyncBatchNorm()]`` swaps every BatchNorm layer
    for :class:`AllReduceBatchNorm` before DDP wraps the model, and swaps them back after.

    Use it instead of ``sync_batchnorm=true`` (Lightning allows only one of the two).
    """

    def apply(self, model: nn.Module) -> nn.Module:
        def make(m):
            if isinstance(m, _BatchNorm) and not isinstance(
                m, (AllReduceBatchNorm, nn.SyncBatchNorm)
            ):
                new = _converted(m, AllReduceBatchNorm)
                new._original_class = type(m)
                return new
            return None

        return _swap(model, make)

    def revert(self, model: nn.Module) -> nn.Module:
        def make(m):
            if isinstance(m, AllReduceBatchNorm):
                original = _converted(m, m.__dict__.get("_original_class", nn.BatchNorm1d))
                original.__dict__.pop("_original_class", None)
                return original
            return None

        return _swap(model, make)
