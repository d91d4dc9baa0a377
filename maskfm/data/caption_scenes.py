"""Generated pictures with captions that describe them (no download).

A scene holds 1-3 objects in one to three groups; every group has one colour, one shape, a
count and a position (left / right / top / bottom / centre). The caption names each group
("two red circles on the left and a blue square at the top"), so its colour, shape, count
and position words can only be recovered from the picture. :func:`sample_scene` draws the
scene and caption from a ``numpy`` Generator; :func:`render_scene` then draws the picture
with the same generator, so a caption can be made without rendering (tokenizer corpus).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 70, 225),
    "yellow": (245, 220, 20),
    "purple": (140, 40, 180),
    "orange": (250, 130, 10),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
PLURALS = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
POSITIONS: dict[str, str] = {  # name -> phrase
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
# Kinds of caption words that are recorded as image-grounded spans.
GROUNDED_KINDS = ("colour", "shape", "count", "position")

# Regions (x0, x1, y0, y1) in [0, 1] where a group's objects are placed; a strip along
# which up to three objects are spread.
_REGIONS = {
    "left": (0.04, 0.36, 0.08, 0.92),
    "right": (0.64, 0.96, 0.08, 0.92),
    "top": (0.2, 0.8, 0.04, 0.36),
    "bottom": (0.2, 0.8, 0.64, 0.96),
    "centre": (0.3, 0.7, 0.3, 0.7),
}
_COMPATIBLE = {  # positions whose regions do not overlap much, per position
    "left": ("right", "top", "bottom", "centre"),
    "right": ("left", "top", "bottom", "centre"),
    "top": ("left", "right", "bottom", "centre"),
    "bottom": ("left", "right", "top", "centre"),
    "centre": ("left", "right", "top", "bottom"),
}

_OPENERS = (
    "{objs}",
    "a picture with {objs}",
    "an image showing {objs}",
    "{there} {objs}",
    "we can see {objs}",
    "a drawing of {objs}",
    "this scene has {objs}",
    "{objs} on a {bg} background",
)


@dataclass
class Group:
    colour: str
    shape: str
    count: int
    position: str


@dataclass
class Scene:
    groups: list[Group]
    textured: bool
    caption: str = ""
    # (start, end, kind) character spans of image-grounded words in ``caption``
    spans: list[tuple[int, int, str]] = field(default_factory=list)


class _Builder:
    """Appends words to a caption while recording the character spans of grounded ones."""

    def __init__(self) -> None:
        self.text = ""
        self.spans: list[tuple[int, int, str]] = []

    def add(self, word: str, kind: str | None = None, sep: str = " ") -> None:
        if self.text:
            self.text += sep
        start = len(self.text)
        self.text += word
        if kind is not None:
            self.spans.append((start, len(self.text), kind))

    def words(self, text: str) -> None:
        for w in text.split():
            self.add(w)


def _group_phrase(b: _Builder, g: Group, rng: np.random.Generator, with_position: bool) -> None:
    colour_first = rng.random() < 0.8  # else "two circles coloured red"
    if g.count == 1 and rng.random() < 0.6:  # the article is not marked as grounded
        b.add("an" if colour_first and g.colour[0] in "aeiou" else "a")
    else:
        b.add(COUNT_WORDS[g.count], "count")
    shape = g.shape if g.count == 1 else PLURALS[g.shape]
    if colour_first:
        b.add(g.colour, "colour")
        b.add(shape, "shape")
    else:
        b.add(shape, "shape")
        b.add("coloured")
        b.add(g.colour, "colour")
    if with_position:
        *lead, last = POSITIONS[g.position].split()
        b.words(" ".join(lead))
        b.add(last, "position")


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw the objects and the caption of one scene from ``rng``."""
    n_objects = int(rng.integers(1, 4))
    n_groups = int(rng.integers(1, n_objects + 1))
    counts = [1] * n_groups
    for _ in range(n_objects - n_groups):
        counts[int(rng.integers(n_groups))] += 1
    colours = list(COLOURS)
    kinds = rng.permutation(len(colours) * len(SHAPES))[:n_groups]
    positions = [str(p) for p in rng.permutation(list(POSITIONS))[:n_groups]]
    groups = [
        Group(colours[k // len(SHAPES)], SHAPES[k % len(SHAPES)], c, p)
        for k, c, p in zip(kinds, counts, positions, strict=True)
    ]
    scene = Scene(groups, textured=bool(rng.random() < 0.5))

    b = _Builder()
    opener = _OPENERS[int(rng.integers(len(_OPENERS)))]
    head, _, tail = opener.partition("{objs}")
    there = "there is" if groups[0].count == 1 else "there are"
    b.words(head.replace("{there}", there))
    with_position = n_groups > 1 or rng.random() < 0.8
    for i, g in enumerate(groups):
        if i > 0:
            if i == n_groups - 1:
                b.add("and")
            else:
                b.text += ","
        _group_phrase(b, g, rng, with_position)
    b.words(tail.replace("{bg}", "textured" if scene.textured else "plain"))
    scene.caption, scene.spans = b.text, b.spans
    return scene


def _background(rng: np.random.Generator, size: int, textured: bool) -> np.ndarray:
    """Greyish uint8 (size, size, 3): plain, or a faint gradient + stripes."""
    base = rng.uniform(0.35, 0.65) + rng.uniform(-0.05, 0.05, size=3)
    if not textured:
        return np.broadcast_to((base * 255).astype(np.uint8), (size, size, 3)).copy()
    ax = np.linspace(0.0, 1.0, size, dtype=np.float32)
    theta = rng.uniform(0, math.pi)
    u = ax[None, :] * math.cos(theta) + ax[:, None] * math.sin(theta)
    f = 0.06 * (u - 0.5) + 0.04 * np.sin(2 * math.pi * rng.uniform(3, 8) * u)
    rgb = np.clip(base[None, None, :] + f[..., None], 0, 1)
    return (rgb * 255).astype(np.uint8)


def _draw(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    r: float,
    colour: tuple[int, int, int],
    angle: float,
) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        return
    if shape == "square":
        radii, start = np.full(4, r), math.pi / 4 + angle
    elif shape == "diamond":
        radii, start = np.array([r, 0.65 * r] * 2), angle
    elif shape == "triangle":
        radii, start = np.full(3, r), -math.pi / 2 + angle
    elif shape == "star":
        radii, start = np.tile([r, 0.42 * r], 5), -math.pi / 2 + angle
    elif shape == "cross":
        w = 0.32
        pts = (
            np.array(
                [
                    (w, 1),
                    (w, w),
                    (1, w),
                    (1, -w),
                    (w, -w),
                    (w, -1),
                    (-w, -1),
                    (-w, -w),
                    (-1, -w),
                    (-1, w),
                    (-w, w),
                    (-w, 1),
                ]
            )
            * r
        )
        draw.polygon([(cx + x, cy + y) for x, y in pts.tolist()], fill=colour)
        return
    else:  # pragma: no cover - guarded by SHAPES
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    t = start + 2 * math.pi * np.arange(len(radii)) / len(radii)
    draw.polygon(
        list(
            zip((cx + radii * np.cos(t)).tolist(), (cy + radii * np.sin(t)).tolist(), strict=True)
        ),
        fill=colour,
    )


def render_scene(scene: Scene, rng: np.random.Generator, img_size: int) -> Image.Image:
    """Draw ``scene`` as an RGB PIL image (drawn at 2x and downsampled for anti-aliasing)."""
    size = 2 * img_size
    img = Image.fromarray(_background(rng, size, scene.textured), mode="RGB")
    draw = ImageDraw.Draw(img)
    for g in scene.groups:
        x0, x1, y0, y1 = _REGIONS[g.position]
        along_x = (x1 - x0) > (y1 - y0)
        length = (x1 - x0) if along_x else (y1 - y0)
        width = (y1 - y0) if along_x else (x1 - x0)
        slot = length / g.count
        r = min(slot, width) * rng.uniform(0.32, 0.42)
        for k in range(g.count):
            a = (x0 if along_x else y0) + slot * (k + 0.5) + rng.uniform(-0.1, 0.1) * slot
            b = (y0 + y1) / 2 if along_x else (x0 + x1) / 2
            b += rng.uniform(-0.1, 0.1) * width
            cx, cy = (a, b) if along_x else (b, a)
            jitter = rng.integers(-12, 13, size=3)
            colour = cast(
                "tuple[int, int, int]",
                tuple(
                    int(np.clip(c + j, 0, 255))
                    for c, j in zip(COLOURS[g.colour], jitter, strict=True)
                ),
            )
            _draw(draw, g.shape, cx * size, cy * size, r * size, colour, rng.uniform(-0.25, 0.25))
    return img.resize((img_size, img_size), Image.Resampling.BILINEAR, reducing_gap=None)
