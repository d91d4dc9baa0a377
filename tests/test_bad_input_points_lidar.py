"""Bad point-cloud and LiDAR input: a clear error naming the file and the problem, or with
``skip_corrupt=True`` a counted skip; never garbage served silently or a crash in the model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maskfm.data.lidar import (
    MIN_VOXELS,
    KittiVelodyne,
    LidarDataModule,
    NuScenesLidar,
    SyntheticLidar,
    WaymoNpy,
)
from maskfm.data.points import (
    CorruptPointCloudError,
    ModelNet40,
    PointCloudDataModule,
    ScanObjectNN,
    ShapeNet55,
)
from tests.test_data_lidar import make_kitti, make_nuscenes
from tests.test_data_points import (
    NP,
    STORED,
    SYNSETS,
    _blob,
    _mn_write,
    _rewrite_h5,
    make_modelnet,
    make_scan,
    make_shapenet,
    needs_h5py,
)

# ----------------------------------------------------------------------------- LiDAR: few voxels


def _one_voxel_sweep(n: int = 50) -> np.ndarray:
    """n returns inside a single KITTI voxel (10 m ahead): e.g. a blocked sensor."""
    pts = np.tile([10.01, 0.01, -0.95, 0.5], (n, 1)).astype(np.float32)
    pts[:, :3] += np.random.default_rng(0).uniform(0, 0.01, (n, 3))
    return pts.astype(np.float32)


def _spread_sweep(num_voxels: int) -> np.ndarray:
    """One point per voxel, on a 20 m arc over +-45 deg of azimuth (one KITTI voxel each)."""
    a = np.linspace(-np.pi / 4, np.pi / 4, num_voxels)
    xyz = np.stack([20 * np.cos(a), 20 * np.sin(a), np.full(num_voxels, -1.0)], 1)
    return np.concatenate([xyz, np.full((num_voxels, 1), 0.5)], 1).astype(np.float32)


def test_sweep_in_too_few_voxels_raises_or_is_skipped(tmp_path):
    root = tmp_path / "kitti"
    make_kitti(root, n_files=4, lists=False)
    bad = root / "training" / "velodyne" / "000001.bin"
    _one_voxel_sweep().tofile(bad)
    ds = KittiVelodyne(root, "train", grid="kitti")
    with pytest.raises(CorruptPointCloudError) as info:
        ds[1]
    msg = str(info.value)
    assert str(bad) in msg and "only 1 voxels" in msg and f"min_voxels={MIN_VOXELS}" in msg
    assert ds[0]["skipped"] == 0 and ds[2]["skipped"] == 0  # the fixture's sweeps pass
    s = KittiVelodyne(root, "train", grid="kitti", skip_corrupt=True)[1]
    assert s["skipped"] == 1 and s["frame_id"].endswith("000002.bin")
    # the threshold is a parameter (data.min_voxels); 1 keeps only the in-range check
    assert len(KittiVelodyne(root, "train", grid="kitti", min_voxels=1)[1]["voxel_features"]) == 1
    _spread_sweep(MIN_VOXELS - 1).tofile(bad)
    with pytest.raises(CorruptPointCloudError, match=rf"000001\.bin.*only {MIN_VOXELS - 1} voxels"):
        ds[1]
    _spread_sweep(MIN_VOXELS).tofile(bad)
    assert len(ds[1]["voxel_features"]) == MIN_VOXELS
    with pytest.raises(ValueError, match="min_voxels"):
        KittiVelodyne(root, "train", min_voxels=-1)


def test_datamodule_min_voxels_skips_and_counts(tmp_path):
    root = tmp_path / "kitti"
    make_kitti(root, n_files=4, lists=False)
    _one_voxel_sweep().tofile(root / "training" / "velodyne" / "000002.bin")
    dm = LidarDataModule(dataset="kitti", root=str(root), grid="kitti", batch_size=4,
                         skip_corrupt=True)  # fmt: skip
    batch = next(iter(dm.eval_dataloaders()[0]))
    assert batch["skipped"].tolist() == [0, 0, 1, 0]
    assert batch["frame_ids"][2].endswith("000003.bin")
    strict = LidarDataModule(dataset="kitti", root=str(root), grid="kitti", batch_size=4)
    with pytest.raises(CorruptPointCloudError, match=r"000002\.bin.*min_voxels"):
        next(iter(strict.eval_dataloaders()[0]))
    lenient = LidarDataModule(dataset="kitti", root=str(root), grid="kitti", batch_size=4,
                              min_voxels=1)  # fmt: skip
    assert next(iter(lenient.eval_dataloaders()[0]))["skipped"].tolist() == [0, 0, 0, 0]
    assert SyntheticLidar(1, grid="kitti").min_voxels == MIN_VOXELS


def test_rmae_trains_on_a_single_sweep_at_the_threshold():
    """The default threshold is enough for R-MAE (radial masking keeps 10 % of the occupied
    sectors, the backbone needs 2 visible voxels) on a batch of one spread-out sweep."""
    pytest.importorskip("spconv")
    from maskfm.data.lidar import collate_lidar, resolve_grid
    from maskfm.methods.rmae import RMAE

    grid = resolve_grid("kitti", voxel_size=[0.1, 0.1, 0.1])

    class Spread(SyntheticLidar):
        def _load(self, idx):
            return _spread_sweep(MIN_VOXELS), None, "spread"

    batch = collate_lidar([Spread(1, grid=grid)[0]])
    model = RMAE(voxel_size=grid.voxel_size).train()
    out = model(batch, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and (~out.mask).sum() >= 2


# ----------------------------------------------------------------------------- empty datasets


@needs_h5py
def test_empty_datasets_fail_at_construction_naming_the_file(tmp_path):
    path = make_scan(tmp_path / "scan")["train"]
    _rewrite_h5(path, data=np.zeros((0, STORED, 3), np.float32), label=np.zeros(0, np.int64))
    for skip in (False, True):
        with pytest.raises(CorruptPointCloudError, match="no objects") as info:
            ScanObjectNN(tmp_path / "scan", "train", num_points=NP, skip_corrupt=skip)
        assert str(path) in str(info.value)
    dm = PointCloudDataModule("scanobjectnn", root=str(tmp_path / "scan"), num_points=NP)
    with pytest.raises(CorruptPointCloudError, match="no objects"):
        dm.setup("fit")

    # list files and folders with nothing in them
    sn = make_shapenet(tmp_path / "sn")
    (sn / "ShapeNet-55" / "train.txt").write_text("\n \n")
    with pytest.raises(CorruptPointCloudError, match=r"train\.txt' is empty"):
        ShapeNet55(sn, "train", NP)
    mn = make_modelnet(tmp_path / "mn")
    (mn / "modelnet40_test.txt").write_text("")
    with pytest.raises(CorruptPointCloudError, match=r"modelnet40_test\.txt' is empty"):
        ModelNet40(mn, "test", NP)
    kitti = tmp_path / "kitti"
    make_kitti(kitti)
    (kitti / "ImageSets" / "val.txt").write_text("\n")
    with pytest.raises(CorruptPointCloudError, match=r"ImageSets/val\.txt' is empty"):
        KittiVelodyne(kitti, "val")
    (tmp_path / "nokitti" / "training" / "velodyne").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no \.bin files.*nokitti"):
        KittiVelodyne(tmp_path / "nokitti", "train")
    (tmp_path / "nonus" / "samples" / "LIDAR_TOP").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="nonus"):
        NuScenesLidar(tmp_path / "nonus")
    (tmp_path / "nowaymo" / "seg").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="nowaymo"):
        WaymoNpy(tmp_path / "nowaymo")


def test_the_command_line_names_a_bad_point_dataset_in_one_line(tmp_path):
    sn = make_shapenet(tmp_path / "sn")
    (sn / "ShapeNet-55" / "train.txt").write_text("\n")
    args = [
        sys.executable,
        "-m",
        "maskfm.train",
        "+experiment=point_mae",
        "data=shapenet55",
        f"data.root={sn}",
        "data.num_workers=0",
        "print_config=false",
        f"paths.log_dir={tmp_path}/runs",
    ]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "train.txt' is empty" in errors[0], proc.stderr[-3000:]
    assert str(sn) in errors[0]
    assert "Traceback" not in proc.stderr


@needs_h5py
def test_no_usable_row_fails_at_construction_even_when_skipping(tmp_path):
    path = make_scan(tmp_path / "scan")["train"]
    _rewrite_h5(path, data=np.full((6, STORED, 3), np.nan, np.float32))
    with pytest.raises(CorruptPointCloudError, match="none of its 6 rows") as info:
        ScanObjectNN(tmp_path / "scan", "train", num_points=NP, skip_corrupt=True)
    assert str(path) in str(info.value) and "row 0" in str(info.value)

    mn = make_modelnet(tmp_path / "mn")
    for f in mn.glob("*/*_000[12].txt"):  # every train shape
        f.write_text("")
    with pytest.raises(CorruptPointCloudError, match="none of the 6 ModelNet40 train") as info:
        ModelNet40(mn, "train", NP, skip_corrupt=True)
    assert str(mn / "modelnet40_train.txt") in str(info.value)
    assert str(mn / "airplane" / "airplane_0001.txt") in str(info.value)


# ----------------------------------------------------------------------------- huge coordinates


@pytest.mark.parametrize("value", [1e20, 1e6, -5e3])
def test_shapenet_huge_coordinate_fails_on_every_read(tmp_path, value):
    root = make_shapenet(tmp_path / "sn")
    bad = root / "shapenet_pc" / f"{SYNSETS[1]}-model0.npy"  # train index 2
    pts = _blob(0)
    pts[7, 1] = value
    np.save(bad, pts)
    ds = ShapeNet55(root, "train", num_points=NP)  # samples 32 of the 64 stored points
    for _ in range(10):  # whichever subset is drawn
        with pytest.raises(CorruptPointCloudError) as info:
            ds[2]
        msg = str(info.value)
        assert str(bad) in msg and "row 7" in msg and "beyond ±1000" in msg
    skipping = ShapeNet55(root, "train", num_points=NP, skip_corrupt=True)
    s = skipping[2]
    assert s["skipped"] == 1 and s["label"] == 1 and s["points"].abs().max() <= 1 + 1e-5


def test_modelnet_huge_coordinate_names_file_and_row(tmp_path):
    root = make_modelnet(tmp_path / "mn")
    bad = root / "bed" / "bed_0001.txt"  # train index 2
    rows = _blob(110, cols=6)
    rows[5, 2] = 1e6
    _mn_write(bad, rows)
    with pytest.raises(CorruptPointCloudError, match="row 5") as info:
        ModelNet40(root, "train", num_points=NP)
    assert str(bad) in str(info.value) and "beyond" in str(info.value)
    ds = ModelNet40(root, "train", num_points=NP, skip_corrupt=True)
    assert ds[2]["skipped"] == 1 and ds[2]["label"] == 1

    # the same check on a converted cache (.npz), per row
    cache = tmp_path / "converted.npz"
    pts = np.stack([_blob(i, cols=6) for i in range(3)])
    pts[1, 9, 0] = 1e20
    np.savez(cache, points=pts, labels=np.arange(3))
    with pytest.raises(CorruptPointCloudError, match=r"converted\.npz' row 1 \(bed_0003\)"):
        ModelNet40(root, "test", num_points=NP, cache_file=cache)
    ds = ModelNet40(root, "test", num_points=NP, cache_file=cache, skip_corrupt=True)
    assert ds[1]["skipped"] == 1 and ds[1]["label"] == 2


@needs_h5py
def test_scanobjectnn_huge_coordinate_names_file_and_row(tmp_path):
    path = make_scan(tmp_path / "scan")["train"]
    data = np.stack([_blob(i) for i in range(6)])
    data[3, 11, 0] = 1e30
    _rewrite_h5(path, data=data)
    with pytest.raises(CorruptPointCloudError, match="1 unusable rows") as info:
        ScanObjectNN(tmp_path / "scan", "train", num_points=NP)
    msg = str(info.value)
    assert str(path) in msg and "row 3" in msg and "beyond ±100 m" in msg
    ds = ScanObjectNN(tmp_path / "scan", "train", num_points=NP, skip_corrupt=True)
    s = ds[3]
    assert s["skipped"] == 1 and s["label"] == 4
    assert all(ds[i]["points"].abs().max() < 100 for i in range(6))


# ----------------------------------------------------------------------------- .bin format


def _kitti_with(root: Path, write) -> Path:
    make_kitti(root, n_files=3, lists=False)
    bad = root / "training" / "velodyne" / "000001.bin"
    write(bad)
    return bad


@pytest.mark.parametrize(
    "kind",
    ["float64", "five_columns"],
)
def test_kitti_bin_with_wrong_dtype_or_columns(tmp_path, kind):
    cloud = make_kitti(tmp_path / "ref", n_files=1, lists=False)[0]  # 200 points
    if kind == "float64":
        data = cloud.astype(np.float64)
    else:  # an extra per-point column (e.g. a timestamp); 200 * 20 bytes is a multiple of 16
        data = np.concatenate([cloud, np.full((len(cloud), 1), 0.05, np.float32)], 1)
    bad = _kitti_with(tmp_path / "kitti", data.tofile)
    for grid in (None, "kitti"):
        with pytest.raises(CorruptPointCloudError) as info:
            KittiVelodyne(tmp_path / "kitti", "train", grid=grid)[1]
        msg = str(info.value)
        assert str(bad) in msg
        assert "values implausible for float32 x, y, z, reflectance" in msg
        assert "reflectance outside [0, 1]" in msg
        assert "maybe written as float64 or with a different column count" in msg
    s = KittiVelodyne(tmp_path / "kitti", "train", grid="kitti", skip_corrupt=True)[1]
    assert s["skipped"] == 1 and s["frame_id"].endswith("000002.bin")


def test_kitti_bin_size_error_hints_at_the_layout(tmp_path):
    cloud = make_kitti(tmp_path / "ref", n_files=1, lists=False)[0][:199]  # 199 * 20 bytes
    five = np.concatenate([cloud, np.zeros((len(cloud), 1), np.float32)], 1)
    bad = _kitti_with(tmp_path / "kitti", five.tofile)
    with pytest.raises(CorruptPointCloudError, match="not a multiple of 16") as info:
        KittiVelodyne(tmp_path / "kitti", "train")[1]
    assert str(bad) in str(info.value) and "column count" in str(info.value)


@pytest.mark.parametrize("kind", ["float64", "four_columns"])
def test_nuscenes_bin_with_wrong_dtype_or_columns(tmp_path, kind):
    root = tmp_path / "nus"
    clouds = make_nuscenes(root, 2)  # x, y, z, intensity 0-255 (150 points)
    bad = sorted((root / "samples" / "LIDAR_TOP").iterdir())[1]
    if kind == "float64":
        raw = np.fromfile(bad, dtype="<f4").reshape(-1, 5)
        raw.astype(np.float64).tofile(bad)
    else:  # no ring column: 150 * 16 bytes is a multiple of 20
        clouds[1].astype(np.float32).tofile(bad)
    with pytest.raises(CorruptPointCloudError) as info:
        NuScenesLidar(root)[1]
    msg = str(info.value)
    assert str(bad) in msg
    assert "values implausible for float32 x, y, z, intensity, ring" in msg
    assert "maybe written as float64 or with a different column count" in msg
    s = NuScenesLidar(root, skip_corrupt=True)[1]
    assert s["skipped"] == 1 and s["frame_id"] != str(bad)


def test_plausibility_check_accepts_real_looking_sweeps(tmp_path):
    """Synthetic sweeps written in the KITTI and nuScenes layouts load unchanged."""
    sweep = SyntheticLidar(1, beams=32, seed=4)[0]["points"].numpy()
    vdir = tmp_path / "kitti" / "training" / "velodyne"
    vdir.mkdir(parents=True)
    sweep.tofile(vdir / "000000.bin")
    got = KittiVelodyne(tmp_path / "kitti", "train", grid="kitti")[0]
    assert torch.equal(got["points"], torch.from_numpy(sweep))
    ldir = tmp_path / "nus" / "samples" / "LIDAR_TOP"
    ldir.mkdir(parents=True)
    ring = (np.arange(len(sweep)) % 32)[:, None]
    nus = np.concatenate([sweep[:, :3], np.round(sweep[:, 3:] * 255), ring], 1).astype(np.float32)
    nus.tofile(ldir / "a.pcd.bin")
    got = NuScenesLidar(tmp_path / "nus", grid="nuscenes")[0]["points"]
    torch.testing.assert_close(got[:, :3], torch.from_numpy(sweep[:, :3]))


def test_rmae_names_a_batch_with_too_few_visible_voxels():
    from maskfm.methods.rmae import RMAE

    model = RMAE(point_cloud_range=[0.0, -6.4, -3.0, 12.8, 6.4, 1.0], voxel_size=[0.8, 0.8, 0.1])
    coords = torch.tensor(
        [[0, 20, 8, 3], [0, 20, 8, 4], [0, 21, 8, 4]], dtype=torch.int32
    )  # one sector
    batch = {"voxel_coords": coords, "voxel_features": torch.ones(3, 4), "batch_size": 1}
    with pytest.raises(
        ValueError, match=r"R-MAE: \d of the batch's 3 voxels stay visible after masking"
    ):
        model(batch, torch.Generator().manual_seed(0))
