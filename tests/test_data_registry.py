"""Dataset formats are found through registries: a new format is one module, no library edit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from maskfm.data.captions import CAPTION_DATASETS, CaptionDataModule
from maskfm.data.lidar import LIDAR_DATASETS, LidarDataModule
from maskfm.data.points import (
    POINT_DATASETS,
    PointCloudDataModule,
    PointSet,
    register_point_dataset,
)
from maskfm.train import train

TINY_POINTS = [
    "+experiment=point_mae", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
    "model.decoder_depth=1", "model.decoder_num_heads=2", "model.pointnet_hidden=[16,32,64]",
    "model.num_groups=16", "model.group_size=16", "data.num_points=256", "data.batch_size=4",
]  # fmt: skip


class TinyNpy(Dataset):
    """``<root>/<split>/<class>_<n>.npy`` float (N, 3) clouds, labels = sorted class names."""

    def __init__(self, root: str, split: str, num_points: int) -> None:
        self.files = sorted((Path(root) / split).glob("*.npy"))
        self.classes = self.read_classes(root)
        self.num_points = num_points

    @staticmethod
    def read_classes(root: str | None) -> list[str]:
        return sorted({p.name.split("_")[0] for p in Path(root, "train").glob("*.npy")})

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx: int) -> dict:
        path = self.files[idx]
        pts = np.load(path)[: self.num_points].astype(np.float32)
        label = self.classes.index(path.name.split("_")[0])
        return {"points": torch.from_numpy(pts), "label": label, "skipped": 0}


@pytest.fixture
def tiny_format(tmp_path):
    """Register "tiny_npy" for one test, as a format module would, and write its files."""
    register_point_dataset("tiny_npy", classes=TinyNpy.read_classes)(
        lambda s: TinyNpy(s.root, s.split, s.num_points)
    )
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        (tmp_path / split).mkdir()
        for i in range(n):
            cls = ("ball", "box")[i % 2]
            np.save(tmp_path / split / f"{cls}_{i}.npy", rng.normal(size=(300, 3)))
    yield tmp_path
    POINT_DATASETS.remove("tiny_npy")


def test_a_format_registered_outside_the_library_loads_and_trains(tiny_format, compose_train):
    dm = PointCloudDataModule("tiny_npy", root=str(tiny_format), num_points=256, batch_size=4)
    assert dm.class_names == ["ball", "box"] and dm.eval_class_names == ["ball", "box"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["points"].shape == (4, 256, 3) and set(batch["label"].tolist()) <= {0, 1}
    tr, te = dm.eval_dataloaders()
    assert sum(len(b["label"]) for b in tr) == 8 and sum(len(b["label"]) for b in te) == 4

    cfg = compose_train([*TINY_POINTS, "data.dataset=tiny_npy", f"+data.root={tiny_format}",
                         "trainer.max_steps=2", "logger=none"])  # fmt: skip
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 2


def test_the_factory_gets_the_split_and_the_datamodule_arguments(tiny_format):
    seen: list[PointSet] = []
    POINT_DATASETS.remove("tiny_npy")

    @register_point_dataset("tiny_npy", classes=TinyNpy.read_classes)
    def make(s: PointSet) -> TinyNpy:
        seen.append(s)
        return TinyNpy(s.root, s.split, s.num_points)

    dm = PointCloudDataModule("tiny_npy", root=str(tiny_format), num_points=64, batch_size=2)
    dm.setup("fit")
    assert [(s.split, s.eval_set, s.num_points) for s in seen] == [
        ("train", False, 64),
        ("test", False, 64),
    ]
    assert seen[0].hparams.batch_size == 2 and seen[0].root == str(tiny_format)
    with pytest.raises(ValueError, match="variant='x' only applies to dataset 'scanobjectnn'"):
        PointCloudDataModule("tiny_npy", root=str(tiny_format), variant="x")
    with pytest.raises(ValueError, match="already registered"):
        register_point_dataset("tiny_npy", classes=TinyNpy.read_classes)(make)


def test_unknown_names_list_the_registered_formats(tiny_format):
    with pytest.raises(ValueError) as e:
        PointCloudDataModule("nope")
    assert str(e.value) == (
        "dataset must be one of ('synthetic', 'shapenet55', 'modelnet40', 'scanobjectnn', 'point_folder', "
        "'tiny_npy'), got 'nope'"
    )
    with pytest.raises(ValueError, match="one of .*'tiny_npy'.*got 'nope'"):
        PointCloudDataModule(eval_dataset="nope")
    with pytest.raises(ValueError) as e:
        LidarDataModule("nope")
    assert (
        str(e.value)
        == "dataset must be one of ('synthetic', 'kitti', 'nuscenes', 'waymo'), got 'nope'"
    )
    with pytest.raises(ValueError) as e:
        CaptionDataModule("nope")
    assert str(e.value) == "dataset must be synthetic, arrow or folder, got 'nope'"
    assert LIDAR_DATASETS.names() == ("synthetic", "kitti", "nuscenes", "waymo")
    assert CAPTION_DATASETS.names() == ("synthetic", "arrow", "folder")
