"""The method contract: what every masked-modeling method implements.

A method is an ``nn.Module`` that composes parts (a masker, an encoder, a decoder or head,
a target) and implements :class:`MaskedMethod`. The shared :class:`MaskedPretrainer` owns
the loop; evaluation, export and the benchmark use only what is declared here, never
``hasattr`` probes.

Token layouts (see :class:`~maskfm.masking.TokenLayout`) and the shapes they give:

=========  ==========================  ============================  ========================
layout     tokens                      ``mask``                      ``features(batch)``
=========  ==========================  ============================  ========================
grid2d     image patches, B x L        ``(B, L)``                    ``(B, 1 + L, D)`` (CLS)
sequence   text tokens, B x T          ``(B, T)``                    ``(B, T, D)``
points3d   point patches, B x G        ``(B, G)``                    ``(B, G, D)``
ragged     voxels of the batch, V      ``(V,)``                      ``(V, C)``
=========  ==========================  ============================  ========================
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from maskfm.masking import Masker
from maskfm.methods.output import MaskedModelingOutput

MEDIA = ("panels", "clouds")


@dataclass(frozen=True)
class Progress:
    """Where training stands when a step starts (given to :meth:`MaskedMethod.on_train_step`).

    Attributes:
        global_step: optimiser steps already taken (0 at the first step).
        epoch: the current epoch (0-based).
        epoch_fraction: epochs done, fractional: ``epoch + batch / batches per epoch``.
        total_steps: optimiser steps of the whole run, None when it has no fixed end.
    """

    global_step: int
    epoch: int
    epoch_fraction: float
    total_steps: int | None

    @property
    def fraction(self) -> float | None:
        """Share of the run done, in ``[0, 1]`` (None without ``total_steps``)."""
        if not self.total_steps:
            return None
        return min(1.0, self.global_step / self.total_steps)


class MaskedMethod(nn.Module, metaclass=ABCMeta):
    """Base class of every method (the contract; tests/test_contract.py checks each config).

    Attributes:
        masker: which tokens to hide; any masker whose ``supported_kinds`` include the
            method's layout works (``masking=NAME``).
        encoder: the module evaluation, export and fine-tuning take.
        media: the reconstruction pictures the method draws: ``"panels"`` (images
            ``(B, C, H, W)`` in input space, :meth:`reconstruction_panels`) and/or ``"clouds"``
            (points ``(B, P, 3)``, :meth:`reconstruction_clouds`); empty = none.
    """

    masker: Masker
    encoder: nn.Module
    media: tuple[str, ...] = ()

    @abstractmethod
    def forward(
        self, batch: dict, generator: torch.Generator | None = None
    ) -> MaskedModelingOutput:
        """One masked-modeling pass: mask with ``generator``, encode, decode, loss.

        Returns a :class:`MaskedModelingOutput` whose ``mask`` has the layout's shape and
        whose ``pred`` (when the target is per token) is aligned with it.
        """

    @abstractmethod
    def features(self, batch: dict) -> torch.Tensor:
        """Frozen encoder tokens of the un-masked input, for evaluation (shapes in the module
        docstring). Called under ``torch.no_grad()`` by evaluations."""

    def on_train_step(self, progress: Progress) -> None:  # noqa: B027 (optional hook)
        """Called by the pretrainer before every training step: schedules that follow training
        progress (temperatures, loss-weight ramps, momentum/EMA updates, ratio curricula)
        live here. Default: nothing."""

    def no_weight_decay(self) -> set[str]:
        """Parameter names (as in ``named_parameters``) kept out of weight decay."""
        return set()

    def reconstruction_panels(
        self, batch: dict, out: MaskedModelingOutput
    ) -> dict[str, torch.Tensor]:
        """Images ``(B, C, H, W)`` to look at, by panel name; declared by ``"panels"`` in media."""
        raise NotImplementedError(f"{type(self).__name__} draws no panels (media={self.media})")

    def reconstruction_clouds(
        self, batch: dict, out: MaskedModelingOutput
    ) -> dict[str, torch.Tensor]:
        """Point clouds ``(B, P, 3)`` to look at, by panel name; declared by ``"clouds"`` in media."""
        raise NotImplementedError(f"{type(self).__name__} draws no clouds (media={self.media})")
