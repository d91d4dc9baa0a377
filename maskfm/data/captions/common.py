"""What the caption formats share: normalisation constants, the record error, image decoding and
the record-dataset base (skip unusable records, encode the caption)."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from maskfm.data.base import load_or_skip
from maskfm.errors import UserInputError
from maskfm.tokens.text import TextEncoder

log = logging.getLogger(__name__)

SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.25, 0.25, 0.25)
CLIP_MEAN = (0.4815, 0.4578, 0.4082)
CLIP_STD = (0.2686, 0.2613, 0.2758)

Transform = Callable[[Image.Image], Any]


class CaptionRecordError(UserInputError):
    """A caption record that cannot be used (bad image, missing file, empty caption...)."""


def clip_transform(img_size: int) -> T.Compose:
    """M3AE "clip" transform: Resize(bicubic) -> CenterCrop -> ToTensor -> CLIP mean/std."""
    return T.Compose(
        [
            T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(img_size),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def _decode(data: bytes | None, where: str) -> Image.Image:
    if data is not None and not isinstance(data, (bytes, bytearray)):
        shown = repr(data)[:60]
        raise CaptionRecordError(
            f"{where}: the image is a {type(data).__name__} ({shown}), expected encoded image bytes"
        )
    if not data:
        raise CaptionRecordError(f"{where}: image is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise CaptionRecordError(f"{where}: cannot decode image: {type(e).__name__}: {e}") from e


def _check_caption(caption: Any, where: str) -> str:
    if not isinstance(caption, str) or not caption.strip():
        raise CaptionRecordError(f"{where}: empty or missing caption ({caption!r})")
    return caption


class _RecordDataset(Dataset):
    """Shared skip/encode logic: subclasses implement ``__len__`` and ``load(i)``
    -> (PIL image, caption, record name), raising CaptionRecordError for bad records."""

    def __init__(
        self, encoder: TextEncoder | None, transform: Transform | None, skip_corrupt: bool
    ) -> None:
        self.encoder = encoder
        self.transform = transform if transform is not None else T.ToTensor()
        self.skip_corrupt = skip_corrupt
        self._bad: set[int] = set()  # per process (each DataLoader worker has its own)
        self.num_truncated = 0  # per process

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def load(self, idx: int) -> tuple[Image.Image, str, str]:  # pragma: no cover
        raise NotImplementedError

    def __getitem__(self, idx: int) -> dict[str, Any]:
        _, (img, caption, record), skipped = load_or_skip(
            idx,
            len(self),
            self.load,
            self._bad,
            self.skip_corrupt,
            (CaptionRecordError,),
            "caption records",
            CaptionRecordError,
        )
        out = {
            "image": self.transform(img),
            "caption": caption,
            "spans": [],
            "record": record,
            "skipped": skipped,
        }
        if self.encoder is not None:
            out.update(self.encoder(caption))
            if out["truncated"]:
                self.num_truncated += 1
                log.debug("%s: caption truncated to %d tokens", record, self.encoder.max_len)
        return out

    def source_files(self) -> list[str]:  # pragma: no cover - overridden
        """The files the records come from (they key the cached tokenizer)."""
        raise NotImplementedError

    def corpus(self) -> list[str]:  # pragma: no cover - overridden
        """All non-empty captions (the tokenizer's training corpus), without decoding images."""
        raise NotImplementedError
