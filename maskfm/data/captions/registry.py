"""The caption format registry: ``@register_caption_dataset(name)`` on a factory.

A format module defines its dataset and registers a factory ``make(CaptionSet) -> Dataset`` under
its config name (``data.dataset``); :class:`~maskfm.data.captions.datamodule.CaptionDataModule`
finds it here, so a new format is one module plus its ``conf/data`` yaml. A non-generated
format's dataset provides ``source_files()`` and ``corpus()`` (see
:class:`~maskfm.data.captions.common._RecordDataset`) for the tokenizer trained on its captions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightning.fabric.utilities.data import AttributeDict
from torch.utils.data import Dataset

from maskfm.data.registry import Registry

__all__ = ["CAPTION_DATASETS", "CaptionFormat", "CaptionSet", "register_caption_dataset"]


@dataclass(frozen=True)
class CaptionSet:
    """What a factory gets to build one split. ``encoder`` is None for real formats (set once
    the tokenizer is trained on the train split); ``transform`` is None for generated ones;
    ``size`` is the number of samples of a generated split (``num_train`` / ``num_val``)."""

    split: str
    root: str | None
    hparams: AttributeDict
    encoder: Any
    transform: Any
    img_size: int
    size: int | None = None


@dataclass(frozen=True)
class CaptionFormat:
    """A registered format; ``generated``: needs no root, sized by ``num_train`` / ``num_val``,
    tokenizer trained on the generator's captions, images normalised with (0.5,)*3 / (0.25,)*3."""

    name: str
    make: Callable[[CaptionSet], Dataset]
    generated: bool = False


def _synthetic_arrow_or_folder(names: tuple[str, ...]) -> str:
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


CAPTION_DATASETS: Registry[CaptionFormat] = Registry("caption", _synthetic_arrow_or_folder)


def register_caption_dataset(
    name: str, *, generated: bool = False
) -> Callable[[Callable[[CaptionSet], Dataset]], Callable[[CaptionSet], Dataset]]:
    """Register the decorated factory as caption format ``name`` (see :class:`CaptionFormat`)."""
    return CAPTION_DATASETS.decorator(name, CaptionFormat, generated=generated)
