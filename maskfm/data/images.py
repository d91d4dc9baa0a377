"""Image datasets, MAE transforms and the LightningDataModules that serve them.

Every dataset here returns ``{"image": FloatTensor (3, H, W), "label": int, "skipped": int}``
so that synthetic and on-disk data collate to the same batch keys.
"""

from __future__ import annotations

import colorsys
import copy
import logging
import math
import os
from collections.abc import Callable, Sized
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image, ImageDraw, ImageFile
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from maskfm.data.base import LoaderDataModule, SeededSamples, check_dir, load_or_skip
from maskfm.errors import UserInputError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Fixed round numbers; close to the per-channel statistics of the generator (measured over
# 2000 train samples at 64 px, seed 0: mean ~0.49, std ~0.22).
SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.25, 0.25, 0.25)

CLASSES = ("circle", "square", "triangle", "star", "ellipse", "cross", "ring", "hexagon")

_SPLIT_IDS = {"train": 0, "test": 1}

Transform = Callable[[Image.Image], Any]


class CorruptImageError(UserInputError, OSError):
    """An image file that exists but cannot be decoded (an OSError, as PIL's are)."""


# --------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------


def mae_train_transform(
    img_size: int,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> T.Compose:
    """MAE pretraining augmentation: PIL image -> FloatTensor (3, img_size, img_size)."""
    return T.Compose(
        [
            T.RandomResizedCrop(
                img_size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC
            ),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def eval_transform(
    img_size: int,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> T.Compose:
    """Deterministic resize (shorter side to img_size*256/224) + centre crop -> (3, S, S)."""
    return T.Compose(
        [
            T.Resize(int(img_size * 256 / 224), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(img_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def linprobe_train_transform(
    img_size: int,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> T.Compose:
    """MAE's linear-probe augmentation (main_linprobe.py): RandomResizedCrop at the default
    scale (0.08, 1) + horizontal flip -> FloatTensor (3, img_size, img_size).

    torchvision's crop sampler (10 tries, then a centre crop) stands in for MAE's one-draw
    TF-style sampler (util/crop.py); both draw area and log-aspect uniformly.
    """
    return T.Compose(
        [
            T.RandomResizedCrop(img_size, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def augmented_loader(dataset: Dataset, batch_size: int, num_workers: int, what: str) -> DataLoader:
    """Shuffled, drop_last loader of labelled augmented pictures (the linear probe's train
    loader); a dataset smaller than one batch is an error naming ``what``."""
    size = len(cast(Sized, dataset))
    if size < batch_size:
        raise UserInputError(
            f"{what}: {size} training pictures, fewer than one probe batch of {batch_size}; "
            "lower eval.batch_size"
        )
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers
    )


def seeded_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices: per class, ``round(fraction * n)`` files (at least 1, and
    at least 1 left for training; none from a class of one file) drawn by
    ``numpy.random.default_rng(seed)``; both lists sorted."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    held: list[int] = []
    for y in sorted(by_class):
        members = by_class[y]
        if len(members) < 2:
            continue
        n = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.extend(int(members[j]) for j in rng.permutation(len(members))[:n])
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


# --------------------------------------------------------------------------------------
# Synthetic shapes
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): two float32 arrays of shape (size, size)."""
    ax = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(ax, ax, indexing="xy")


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Low-contrast texture: uint8 (size, size, 3) and its mean colour (3,) in [0, 1].

    One or two of {gradient, stripes, checkerboard, value noise} are averaged into a field
    in [0, 1] that blends two nearby colours.
    """
    xx, yy = _coords(size)
    kinds = rng.choice(4, size=int(rng.integers(1, 3)), replace=False)
    field = np.zeros((size, size), dtype=np.float32)
    for kind in kinds:
        theta = rng.uniform(0, math.pi)
        u = xx * math.cos(theta) + yy * math.sin(theta)
        if kind == 0:  # smooth gradient
            f = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
        elif kind == 1:  # stripes at a random angle
            freq = rng.uniform(3, 10)
            f = 0.5 + 0.5 * np.sin(2 * math.pi * freq * u + rng.uniform(0, 2 * math.pi))
        elif kind == 2:  # (rotated) checkerboard
            v = -xx * math.sin(theta) + yy * math.cos(theta)
            cells = rng.uniform(3, 10)
            f = (np.floor(u * cells) + np.floor(v * cells)) % 2
        else:  # value noise: a coarse random grid upsampled bicubically
            grid = int(rng.integers(3, 9))
            coarse = Image.fromarray(rng.random((grid, grid), dtype=np.float32), mode="F")
            f = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC)).clip(0, 1)
        field += f
    field /= len(kinds)
    c0 = rng.uniform(0.15, 0.85, size=3).astype(np.float32)
    c1 = np.clip(c0 + rng.uniform(-0.2, 0.2, size=3), 0, 1).astype(np.float32)
    rgb = c0 + field[..., None] * (c1 - c0)
    return (rgb * 255 + 0.5).astype(np.uint8), (c0 + c1) / 2


def _pick_colour(rng: np.random.Generator, avoid: np.ndarray) -> tuple[int, int, int]:
    """A saturated RGB colour (0..255) far from ``avoid`` (3,) in [0, 1]."""
    hsv = np.stack([rng.random(16), rng.uniform(0.65, 1.0, 16), rng.uniform(0.55, 1.0, 16)], axis=1)
    rgb = np.array([colorsys.hsv_to_rgb(*c) for c in hsv])
    dist = np.linalg.norm(rgb - avoid, axis=1)
    far = np.flatnonzero(dist > 0.5)
    best = rgb[far[0] if far.size else int(dist.argmax())]
    return cast("tuple[int, int, int]", tuple(int(c * 255 + 0.5) for c in best))


def _polygon(cx: float, cy: float, radii: np.ndarray, angle: float) -> list[tuple[float, float]]:
    """Vertices at evenly spaced angles (starting at ``angle``) with the given radii."""
    t = angle + 2 * math.pi * np.arange(len(radii)) / len(radii)
    return list(
        zip((cx + radii * np.cos(t)).tolist(), (cy + radii * np.sin(t)).tolist(), strict=True)
    )


def _rotated(cx: float, cy: float, pts: np.ndarray, angle: float) -> list[tuple[float, float]]:
    """Rotate (N, 2) offsets by ``angle`` and translate to (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    x = cx + pts[:, 0] * c - pts[:, 1] * s
    y = cy + pts[:, 0] * s + pts[:, 1] * c
    return list(zip(x.tolist(), y.tolist(), strict=True))


_ELLIPSE_T = np.linspace(0, 2 * math.pi, 48, endpoint=False)


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    name: str,
    cx: float,
    cy: float,
    r: float,
    colour: tuple[int, int, int],
) -> None:
    """Draw class ``name`` centred at (cx, cy) inside a circle of radius ``r`` (pixels)."""
    angle = rng.uniform(0, 2 * math.pi)
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif name == "ring":
        draw.ellipse(
            [cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, round(0.35 * r))
        )
    elif name == "square":
        draw.polygon(_polygon(cx, cy, np.full(4, r), angle), fill=colour)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, np.full(3, r), angle), fill=colour)
    elif name == "hexagon":
        draw.polygon(_polygon(cx, cy, np.full(6, r), angle), fill=colour)
    elif name == "star":
        draw.polygon(_polygon(cx, cy, np.tile([r, 0.42 * r], 5), angle), fill=colour)
    elif name == "ellipse":
        ratio = rng.uniform(0.4, 0.65)
        pts = np.stack([r * np.cos(_ELLIPSE_T), ratio * r * np.sin(_ELLIPSE_T)], axis=1)
        draw.polygon(_rotated(cx, cy, pts, angle), fill=colour)
    elif name == "cross":
        w = 0.3 * r
        pts = np.array(
            [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r),
             (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
        )  # fmt: skip
        draw.polygon(_rotated(cx, cy, pts, angle), fill=colour)
    else:  # pragma: no cover - guarded by CLASSES
        raise ValueError(f"unknown shape {name!r}; expected one of {CLASSES}")


def render_shapes(rng: np.random.Generator, img_size: int) -> tuple[Image.Image, int]:
    """One synthetic picture: (RGB PIL image of img_size x img_size, label index into CLASSES).

    Drawn at 2x resolution and downsampled with LANCZOS for anti-aliasing. The labelled
    object spans 25-60% of the image and is drawn last (on top of 0-2 smaller distractors
    of other classes).
    """
    size = 2 * img_size
    bg, bg_mean = _background(rng, size)
    img = Image.fromarray(bg, mode="RGB")
    draw = ImageDraw.Draw(img)

    label = int(rng.integers(len(CLASSES)))
    others = [k for k in range(len(CLASSES)) if k != label]
    for k in rng.choice(others, size=int(rng.integers(0, 3)), replace=False):
        r = rng.uniform(0.08, 0.18) * size / 2
        cx, cy = rng.uniform(r, size - r, size=2)
        _draw_shape(draw, rng, CLASSES[k], cx, cy, r, _pick_colour(rng, bg_mean))

    r = rng.uniform(0.25, 0.60) * size / 2
    cx, cy = rng.uniform(r, size - r, size=2)
    _draw_shape(draw, rng, CLASSES[label], cx, cy, r, _pick_colour(rng, bg_mean))
    return img.resize((img_size, img_size), Image.Resampling.LANCZOS), label


class SyntheticShapes(SeededSamples, Dataset):
    """Procedurally generated shape pictures (no download), ``len(CLASSES)`` classes.

    Sample ``i`` is a pure function of ``(seed, split, i, img_size)``: it is drawn from
    ``numpy.random.default_rng([seed, split_id, i])`` with split_id 0 for "train" and 1 for
    "test". Returns ``{"image": FloatTensor (3, img_size, img_size), "label": int,
    "skipped": 0}``; the image is normalised with SYNTHETIC_MEAN/STD unless ``transform``
    is given, in which case ``transform(PIL image)`` is returned as "image".
    """

    classes = CLASSES
    mean = SYNTHETIC_MEAN
    std = SYNTHETIC_STD

    def __init__(
        self,
        num_samples: int,
        img_size: int = 64,
        seed: int = 0,
        split: str = "train",
        transform: Transform | None = None,
    ) -> None:
        SeededSamples.__init__(self, num_samples, seed, split, _SPLIT_IDS)
        if img_size < 8:
            raise ValueError(f"img_size must be >= 8 pixels, got {img_size}")
        self.img_size = img_size
        self.transform = (
            transform
            if transform is not None
            else T.Compose([T.ToTensor(), T.Normalize(SYNTHETIC_MEAN, SYNTHETIC_STD)])
        )

    def render(self, idx: int) -> tuple[Image.Image, int]:
        """The raw PIL picture and label of sample ``idx``."""
        _, rng = self.rng(idx)
        return render_shapes(rng, self.img_size)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        img, label = self.render(idx)
        return {"image": self.transform(img), "label": label, "skipped": 0}


# --------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------


def _list_classes(root: Path) -> tuple[list[str], dict[str, int]]:
    try:
        return find_classes(root)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"no images found under '{root}': it has no class sub-folders "
            f"(expected root/<class>/<image> with extensions {', '.join(IMG_EXTENSIONS)})"
        ) from e


class ImageFolderDataset(Dataset):
    """A torchvision-style ImageFolder (``root/<class>/<image>``) with explicit decode errors.

    Files are listed once (sorted by class, then path) with the usual image extensions.
    Each image is fully decoded to RGB; a file that fails to decode raises
    :class:`CorruptImageError`, or with ``skip_corrupt=True`` is logged and replaced by the
    next decodable file (wrapping around). Returns ``{"image": transform(PIL) (default
    FloatTensor (3, H, W) in [0, 1]), "label": int, "skipped": number of files skipped}``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Transform | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        self.root = check_dir(root, "image root")
        self.classes, self.class_to_idx = _list_classes(self.root)
        self.samples: list[tuple[str, int]] = make_dataset(
            self.root, self.class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True
        )
        if not self.samples:
            raise FileNotFoundError(
                f"no images found under '{self.root}' in class folders {self.classes} "
                f"(looked for extensions {', '.join(IMG_EXTENSIONS)})"
            )
        self.transform = transform if transform is not None else T.ToTensor()
        self.skip_corrupt = skip_corrupt
        self._corrupt: set[int] = set()  # per process (each DataLoader worker has its own)
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            log.warning(
                "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images under '%s' "
                "will decode silently instead of raising CorruptImageError",
                self.root,
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, idx: int) -> Image.Image:
        """Fully decode sample ``idx`` to an RGB PIL image, or raise CorruptImageError."""
        path = self.samples[idx][0]
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                return img.convert("RGB")  # forces the full decode while the file is open
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            raise CorruptImageError(f"cannot decode image '{path}': {type(e).__name__}: {e}") from e

    def __getitem__(self, idx: int) -> dict[str, Any]:
        j, img, skipped = load_or_skip(
            idx,
            len(self.samples),
            self.load,
            self._corrupt,
            self.skip_corrupt,
            (CorruptImageError,),
            f"images under '{self.root}'",
            CorruptImageError,
        )
        return {"image": self.transform(img), "label": self.samples[j][1], "skipped": skipped}


# --------------------------------------------------------------------------------------
# DataModules
# --------------------------------------------------------------------------------------


class SyntheticImageDataModule(LoaderDataModule):
    """SyntheticShapes train ("train" split) / val ("test" split) loaders.

    ``mean``/``std`` are the fixed SYNTHETIC_MEAN/STD = (0.5,)*3 / (0.25,)*3 (round numbers
    close to the generator's measured statistics); images are normalised with them.
    ``batch_size`` is per device.
    """

    def __init__(
        self,
        img_size: int = 64,
        num_train: int = 5000,
        num_val: int = 500,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_train < batch_size:
            raise ValueError(
                f"num_train={num_train} is smaller than batch_size={batch_size}; "
                "with drop_last=True the train loader would be empty"
            )
        self.img_size = img_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.mean = SYNTHETIC_MEAN
        self.std = SYNTHETIC_STD
        self.num_classes = len(CLASSES)
        self.num_train, self.seed = num_train, seed
        self.train_set = SyntheticShapes(num_train, img_size, seed, split="train")
        self.val_set = SyntheticShapes(num_val, img_size, seed, split="test")

    def eval_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """(train, held-out) labelled loaders for evaluation: unshuffled, unaugmented (the
        generated train pictures are never augmented)."""
        assert self.train_set is not None and self.val_set is not None
        return self.loader(self.train_set, train=False), self.loader(self.val_set, train=False)

    def augmented_train_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """The train pictures, labelled, with MAE's linear-probe augmentation
        (:func:`linprobe_train_transform`), shuffled, drop_last."""
        train = SyntheticShapes(
            self.num_train,
            self.img_size,
            self.seed,
            split="train",
            transform=linprobe_train_transform(self.img_size, self.mean, self.std),
        )
        return augmented_loader(
            train, batch_size or self.batch_size, self.num_workers, "synthetic pictures"
        )


def _with_transform(dataset: ImageFolderDataset, transform: Transform) -> ImageFolderDataset:
    """The same file listing with another transform (and its own corrupt-file memory)."""
    out = copy.copy(dataset)
    out.transform, out._corrupt = transform, set()
    return out


class ImageFolderDataModule(LoaderDataModule):
    """ImageFolder loaders for MAE pretraining (ImageNet mean/std, ``batch_size`` per device).

    Train: the files of ``root`` with ``mae_train_transform(img_size)``, shuffled, drop_last.
    Held-out: ``val_root`` if given; else with ``val_fraction > 0`` a seeded per-class share
    of ``root`` (:func:`seeded_split` with ``split_seed``), which then leaves the train split
    (pretraining and evaluation never see it). Both use ``eval_transform``. With neither,
    the val loader shows the first min(256, N) files of ``root`` (sorted order) and there is
    no held-out split to evaluate on.
    The roots are checked (exist, have class folders) in ``__init__``; files are listed in
    ``setup()``, which the loaders call if Lightning has not.
    """

    val_subset_size = 256

    def __init__(
        self,
        root: str,
        img_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 8,
        val_root: str | None = None,
        skip_corrupt: bool = False,
        pin_memory: bool = True,
        val_fraction: float = 0.0,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = str(root)
        self.val_root = None if val_root is None else str(val_root)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if self.val_root is not None and val_fraction > 0:
            raise ValueError(
                f"set data.val_root ({self.val_root}) or data.val_fraction ({val_fraction}), "
                "not both: each defines the held-out split"
            )
        classes, _ = _list_classes(check_dir(self.root, "image root"))
        if self.val_root is not None:
            _list_classes(check_dir(self.val_root, "image root"))
        self.img_size = img_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.skip_corrupt = skip_corrupt
        self.pin_memory = pin_memory
        self.val_fraction = float(val_fraction)
        self.split_seed = split_seed
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD
        self.num_classes = len(classes)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._listing: ImageFolderDataset | None = None
        self._train_idx: list[int] | None = None  # None: every file of root trains

    @property
    def has_held_out(self) -> bool:
        return self.val_root is not None or self.val_fraction > 0

    def setup(self, stage: str | None = None) -> None:
        if self._listing is not None:
            return
        listing = ImageFolderDataset(
            self.root, mae_train_transform(self.img_size, self.mean, self.std), self.skip_corrupt
        )
        evaluate = eval_transform(self.img_size, self.mean, self.std)
        if self.val_root is not None:
            self.val_set = ImageFolderDataset(self.val_root, evaluate, self.skip_corrupt)
        elif self.val_fraction > 0:
            labels = [y for _, y in listing.samples]
            self._train_idx, held = seeded_split(labels, self.val_fraction, self.split_seed)
            if not held:
                raise UserInputError(
                    f"{self.root}: data.val_fraction={self.val_fraction} holds out no file "
                    f"(every class has a single file); add images or set data.val_root"
                )
            log.info(
                "held out %d of the %d files of %s (data.val_fraction=%s, data.split_seed=%s)",
                len(held),
                len(labels),
                self.root,
                self.val_fraction,
                self.split_seed,
            )
            self.val_set = Subset(_with_transform(listing, evaluate), held)
        else:
            n = min(self.val_subset_size, len(listing))
            self.val_set = Subset(_with_transform(listing, evaluate), range(n))
        self._listing = listing
        self.train_set = self._train_files(listing.transform)

    def _train_files(self, transform: Transform) -> Dataset:
        """The train split (all of ``root`` or ``root`` less the held-out files) with ``transform``."""
        assert self._listing is not None, "setup() lists the files"
        files = _with_transform(self._listing, transform)
        return files if self._train_idx is None else Subset(files, self._train_idx)

    def eval_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """(train, held-out) labelled loaders for evaluation, unshuffled: the train split
        with the deterministic eval transform, and the held-out split (``val_root`` or the
        ``val_fraction`` share of ``root``)."""
        self.setup("fit")
        if not self.has_held_out:
            raise UserInputError(
                f"{self.root}: evaluation needs held-out images; set data.val_root=<dir> or "
                "data.val_fraction=<share of root to hold out, e.g. 0.2>"
            )
        train = self._train_files(eval_transform(self.img_size, self.mean, self.std))
        assert self.val_set is not None
        return self.loader(train, train=False), self.loader(self.val_set, train=False)

    def augmented_train_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """The train split, labelled, with MAE's linear-probe augmentation
        (:func:`linprobe_train_transform`), shuffled, drop_last."""
        self.setup("fit")
        train = self._train_files(linprobe_train_transform(self.img_size, self.mean, self.std))
        return augmented_loader(train, batch_size or self.batch_size, self.num_workers, self.root)
