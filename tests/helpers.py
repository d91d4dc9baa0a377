"""Helpers shared by the tests: tiny model overrides, tiny on-disk datasets, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

# A two-block ViT on 32 px pictures: every code path, a fraction of a second per step.
TINY_MAE = [
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.patch_size=8",
    "model.decoder_embed_dim=32",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
]


def make_image_folder(
    root: Path, classes=("cat", "dog"), per_class: int = 3, size=(48, 40)
) -> Path:
    """A tiny ImageFolder of solid-colour PNGs."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour = (40 * i + 20, 90 * c + 30, 200 - 30 * i)
            Image.new("RGB", size, colour).save(root / name / f"{i}.png")
    return root


def run_train_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300):
    """Run ``python -m maskfm.train ARGS`` in ``cwd``; fail with its output if it fails."""
    Path(cwd).mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "maskfm.train", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"maskfm.train {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def make_shapenet55(
    root: Path, synsets=("02691156", "03001627"), per_synset: int = 2, num_points: int = 1100
) -> Path:
    """A tiny ShapeNet-55 layout: ``shapenet_pc/<synset>-<model>.npy`` + ``ShapeNet-55/*.txt``."""
    import numpy as np

    (root / "shapenet_pc").mkdir(parents=True, exist_ok=True)
    (root / "ShapeNet-55").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = {"train": [], "test": []}
    for synset in synsets:
        for i in range(per_synset):
            name = f"{synset}-model{i:03d}.npy"
            np.save(
                root / "shapenet_pc" / name, rng.normal(size=(num_points, 3)).astype(np.float32)
            )
            names["train" if i < per_synset - 1 else "test"].append(name)
    for split, lines in names.items():
        (root / "ShapeNet-55" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root
