"""The generated caption format "synthetic": pictures and captions of :mod:`maskfm.data.caption_scenes`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset
from torchvision import transforms as T

from maskfm.data.base import SeededSamples
from maskfm.data.caption_scenes import GROUNDED_KINDS, render_scene, sample_scene
from maskfm.data.captions.common import SYNTHETIC_MEAN, SYNTHETIC_STD
from maskfm.data.captions.registry import CaptionSet, register_caption_dataset
from maskfm.tokens.text import TextEncoder

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


class SyntheticCaptions(SeededSamples, Dataset):
    """Generated pictures and captions; sample ``i`` is a pure function of (seed, split, i).

    Drawn from ``numpy.random.default_rng([seed, split_id, i])``. Besides the common keys a
    sample has ``"spans"``: (start, end, kind) character spans of the grounded words.
    """

    mean = SYNTHETIC_MEAN
    std = SYNTHETIC_STD

    def __init__(
        self,
        num_samples: int,
        encoder: TextEncoder | None,
        img_size: int = 64,
        seed: int = 0,
        split: str = "train",
        grounded_kinds: Sequence[str] = GROUNDED_KINDS,
    ) -> None:
        SeededSamples.__init__(self, num_samples, seed, split, _SPLIT_IDS)
        bad = set(grounded_kinds) - set(GROUNDED_KINDS)
        if bad:
            raise ValueError(f"unknown grounded kinds {sorted(bad)}; expected {GROUNDED_KINDS}")
        self.encoder, self.img_size = encoder, img_size
        self.grounded_kinds = tuple(grounded_kinds)
        self.transform = T.Compose([T.ToTensor(), T.Normalize(SYNTHETIC_MEAN, SYNTHETIC_STD)])

    def scene(self, idx: int):
        """(Scene, PIL image) of sample ``idx``."""
        _, rng = self.rng(idx)
        scene = sample_scene(rng)
        return scene, render_scene(scene, rng, self.img_size)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        scene, img = self.scene(idx)
        spans = [s for s in scene.spans if s[2] in self.grounded_kinds]
        out = {
            "image": self.transform(img),
            "caption": scene.caption,
            "spans": spans,
            "record": f"synthetic/{self.split}/{idx}",
            "skipped": 0,
        }
        if self.encoder is not None:
            out.update(self.encoder(scene.caption, spans))
        return out


@register_caption_dataset("synthetic", generated=True)
def _synthetic(s: CaptionSet) -> SyntheticCaptions:
    hp = s.hparams
    assert s.size is not None  # the DataModule sizes generated splits
    return SyntheticCaptions(s.size, s.encoder, s.img_size, hp.seed, s.split, hp.grounded_kinds)
