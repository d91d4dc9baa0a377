"""Tests for maskfm.data.lidar: procedural sweeps, KITTI/nuScenes/Waymo files, bad input, DataModule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from maskfm.data.lidar import (
    CorruptPointCloudError,
    GlobalAugment,
    KittiVelodyne,
    LidarDataModule,
    NuScenesLidar,
    SyntheticLidar,
    WaymoNpy,
    collate_lidar,
    resolve_grid,
)
from maskfm.data.lidar_scenes import (
    BUILDING,
    CAR,
    GROUND,
    GROUND_Z,
    POLE,
    LidarSensor,
    Scene,
    make_street_scene,
    raycast,
    simulate_sweep,
)
from maskfm.tokens.voxelize import KITTI, NUSCENES, WAYMO

EXACT = LidarSensor(beams=32, azimuth_res_deg=0.5, dropout=0.0, range_noise=0.0)


# --------------------------------------------------------------------------------------
# Procedural sweeps
# --------------------------------------------------------------------------------------


def test_synthetic_deterministic_by_seed_and_split():
    a, b = SyntheticLidar(3, seed=0)[1], SyntheticLidar(3, seed=0)[1]
    assert torch.equal(a["points"], b["points"]) and torch.equal(a["labels"], b["labels"])
    assert a["skipped"] == 0 and a["frame_id"] == "synthetic/train/000001"
    other_seed = SyntheticLidar(3, seed=1)[1]["points"]
    other_split = SyntheticLidar(3, seed=0, split="val")[1]["points"]
    other_index = SyntheticLidar(3, seed=0)[2]["points"]
    for pts in (other_seed, other_split, other_index):
        assert pts.shape != a["points"].shape or not torch.equal(pts, a["points"])


def test_synthetic_sweep_contents():
    """Time per sweep: ``python -m maskfm.bench +experiment=rmae`` (``bench.dataset_samples``)."""
    ds = SyntheticLidar(4, beams=32, seed=3)
    samples = [ds[i] for i in range(4)]
    for s in samples:
        pts, lab = s["points"], s["labels"]
        assert pts.dtype == torch.float32 and pts.shape[1] == 4 and lab.dtype == torch.long
        assert 15_000 <= len(pts) <= 40_000
        assert set(lab.unique().tolist()) == {GROUND, CAR, BUILDING, POLE}
        ground = pts[lab == GROUND]
        assert (ground[:, 2] + 1.7).abs().max() < 0.05  # 2 cm range noise, shallow angles
        rng = pts[:, :3].norm(dim=1)
        assert rng.min() > ds.sensor.min_range - 0.1 and rng.max() < ds.sensor.max_range + 0.1
        assert pts[:, 3].min() >= 0 and pts[:, 3].max() <= 1
        assert pts[lab == CAR, 2].min() > GROUND_Z and pts[lab == BUILDING, 2].max() > 2.0
    pts64 = SyntheticLidar(1, beams=64, seed=3)[0]["points"]
    assert len(pts64) > 1.5 * len(samples[0]["points"]) or len(pts64) > 40_000


def _on_box_surface(p: np.ndarray, box: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    cx, cy, cz, length, w, h, yaw = box
    c, s = np.cos(yaw), np.sin(yaw)
    x, y = p[:, 0] - cx, p[:, 1] - cy
    local = np.stack([c * x + s * y, -s * x + c * y, p[:, 2] - cz], 1)
    half = np.array([length, w, h]) / 2
    inside = (np.abs(local) <= half + tol).all(1)
    on_face = (np.abs(np.abs(local) - half) < tol).any(1)
    return inside & on_face


def _strictly_inside(p: np.ndarray, box: np.ndarray, margin: float = 1e-4) -> np.ndarray:
    cx, cy, cz, length, w, h, yaw = box
    c, s = np.cos(yaw), np.sin(yaw)
    x, y = p[..., 0] - cx, p[..., 1] - cy
    local = np.stack([c * x + s * y, -s * x + c * y, p[..., 2] - cz], -1)
    return (np.abs(local) < np.array([length, w, h]) / 2 - margin).all(-1)


@pytest.mark.parametrize(
    "centre", [(10.0, 0.5), (-10.0, 0.0), (3.0, -6.0)]
)  # ahead, wraps +-pi, side
def test_raycast_box_in_front_occludes(centre):
    front = np.array([*centre, GROUND_Z + 0.2 + 0.75, 4.5, 1.8, 1.5, 0.4])
    d = np.hypot(*centre)
    wall_c = np.array(centre) * (d + 8) / d  # a big wall behind the box, same direction
    wall = np.array([*wall_c, GROUND_Z + 5, 3.0, 30.0, 10.0, np.arctan2(centre[1], centre[0])])
    scene = Scene(boxes=np.stack([front, wall]), box_labels=[CAR, BUILDING], box_reflectivity=0.5)
    pts, lab = simulate_sweep(scene, EXACT, np.random.default_rng(0))
    xyz = pts[:, :3].astype(np.float64)
    car, bld = xyz[lab == CAR], xyz[lab == BUILDING]
    assert len(car) > 20 and len(bld) > 20
    assert _on_box_surface(car, front, 1e-4).all() and _on_box_surface(bld, wall, 1e-4).all()
    assert (np.abs(xyz[lab == GROUND, 2] - GROUND_Z) < 1e-4).all()
    # Nothing is seen through the box: no segment sensor -> point passes through its interior.
    f = np.linspace(0.0, 1.0, 400)[None, :, None]
    for pts_k in (bld, xyz[lab == GROUND]):
        assert not _strictly_inside(pts_k[:, None, :] * f, front).any()
    # The ray straight at the box centre (nearest beam / column) returns the box, not the wall.
    hits = raycast(scene, EXACT.elevations(), EXACT.azimuths())
    el, az = EXACT.elevations(), EXACT.azimuths()
    target = np.arctan2(front[2], d)
    r = np.argmin(np.abs(az - np.arctan2(centre[1], centre[0]))) * len(el) + np.argmin(
        np.abs(el - target)
    )
    assert hits.label[r] == CAR and hits.t[r] < d


def test_raycast_cylinder_and_no_ground():
    scene = Scene(
        cylinders=[[6.0, 1.0, 0.3, -3.0, 3.0]], cylinder_labels=[POLE], cylinder_reflectivity=0.5,
        ground_z=None,
    )  # fmt: skip
    pts, lab = simulate_sweep(scene, EXACT, np.random.default_rng(0))
    assert len(pts) > 10 and (lab == POLE).all()
    xyz = pts[:, :3].astype(np.float64)
    radial = np.hypot(xyz[:, 0] - 6.0, xyz[:, 1] - 1.0)
    assert np.abs(radial - 0.3).max() < 1e-4
    assert ((xyz[:, :2] * [6.0, 1.0]).sum(1) < 37.0).all()  # the side facing the sensor
    assert SyntheticLidar(1)[0]["points"][:, 3].std() > 0.02  # intensity varies


def test_street_scene_has_all_primitives():
    scene = make_street_scene(np.random.default_rng(5))
    assert {CAR, BUILDING} <= set(scene.box_labels.tolist()) and len(scene.cylinders) > 4
    # No primitive contains the sensor.
    for box in scene.boxes:
        assert not _strictly_inside(np.zeros((1, 3)), box).any()
    assert (np.hypot(scene.cylinders[:, 0], scene.cylinders[:, 1]) > scene.cylinders[:, 2]).all()


# --------------------------------------------------------------------------------------
# On-disk formats
# --------------------------------------------------------------------------------------


def _cloud(n: int, seed: int, lo=(1.0, -30.0, -2.0), hi=(60.0, 30.0, 0.5)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(lo, hi, (n, 3))
    return np.concatenate([pts, rng.uniform(0, 1, (n, 1))], 1).astype(np.float32)


def make_kitti(root: Path, n_files: int = 4, lists: bool = True) -> list[np.ndarray]:
    vdir = root / "training" / "velodyne"
    vdir.mkdir(parents=True)
    clouds = [_cloud(200 + 10 * i, i) for i in range(n_files)]
    for i, c in enumerate(clouds):
        c.tofile(vdir / f"{i:06d}.bin")
    if lists:
        (root / "ImageSets").mkdir()
        (root / "ImageSets" / "train.txt").write_text("000000\n000001\n000003\n")
        (root / "ImageSets" / "val.txt").write_text("000002\n")
    return clouds


def make_nuscenes(root: Path, n_files: int = 3) -> list[np.ndarray]:
    ldir = root / "samples" / "LIDAR_TOP"
    ldir.mkdir(parents=True)
    clouds = []
    for i in range(n_files):
        c = _cloud(150, 10 + i, (-40, -40, -3), (40, 40, 2))
        c[:, 3] = np.round(c[:, 3] * 255)
        ring = (np.arange(len(c)) % 32).astype(np.float32)[:, None]
        np.concatenate([c, ring], 1).astype(np.float32).tofile(
            ldir / f"n008__LIDAR_TOP__{i}.pcd.bin"
        )
        clouds.append(c)
    return clouds


def make_waymo(root: Path, segments=("segment-a", "segment-b"), frames: int = 2) -> dict:
    out = {}
    for s, seg in enumerate(segments):
        d = root / "waymo_processed_data_v0_5_0" / seg
        d.mkdir(parents=True)
        for f in range(frames):
            c = _cloud(120, 20 + 10 * s + f, (-70, -70, -1.5), (70, 70, 3.5))
            c[:, 3] *= 5.0
            elong = np.full((len(c), 1), 0.5, np.float32)
            nlz = np.where(np.arange(len(c)) % 4 == 0, 1.0, -1.0).astype(np.float32)[:, None]
            arr = np.concatenate([c, elong, nlz], 1).astype(np.float32)
            np.save(d / f"{f:04d}.npy", arr)
            out[(seg, f)] = arr
    return out


def test_kitti_reads_bins_with_and_without_split_lists(tmp_path):
    clouds = make_kitti(tmp_path / "kitti")
    train = KittiVelodyne(tmp_path / "kitti", "train")
    val = KittiVelodyne(tmp_path / "kitti", "val")
    assert len(train) == 3 and len(val) == 1
    s = train[2]
    assert torch.equal(s["points"], torch.from_numpy(clouds[3]))
    assert s["frame_id"].endswith("000003.bin") and (s["labels"] == -1).all()
    assert torch.equal(val[0]["points"], torch.from_numpy(clouds[2]))
    make_kitti(tmp_path / "nolists", lists=False)
    assert len(KittiVelodyne(tmp_path / "nolists", "val")) == 4  # fallback: all files, sorted
    with pytest.raises(FileNotFoundError, match="velodyne"):
        KittiVelodyne(tmp_path, "train")


def test_nuscenes_keeps_xyz_and_intensity_over_255(tmp_path):
    clouds = make_nuscenes(tmp_path / "nus")
    ds = NuScenesLidar(tmp_path / "nus")
    assert len(ds) == 3
    s = ds[1]
    assert s["points"].shape == (150, 4)
    torch.testing.assert_close(s["points"][:, :3], torch.from_numpy(clouds[1][:, :3]))
    torch.testing.assert_close(s["points"][:, 3], torch.from_numpy(clouds[1][:, 3] / 255))
    assert s["points"][:, 3].max() <= 1.0


def test_waymo_tanh_intensity_nlz_and_split_list(tmp_path):
    arrs = make_waymo(tmp_path / "waymo")
    ds = WaymoNpy(tmp_path / "waymo")
    assert len(ds) == 4
    raw = arrs[("segment-b", 0)]
    s = ds[2]
    torch.testing.assert_close(s["points"][:, :3], torch.from_numpy(raw[:, :3]))
    torch.testing.assert_close(s["points"][:, 3], torch.from_numpy(np.tanh(raw[:, 3])))
    nlz = WaymoNpy(tmp_path / "waymo", drop_nlz_points=True)[2]["points"]
    assert len(nlz) == int((raw[:, 5] == -1).sum())
    (tmp_path / "waymo" / "ImageSets").mkdir()
    (tmp_path / "waymo" / "ImageSets" / "val.txt").write_text("segment-b.tfrecord\n")
    assert len(WaymoNpy(tmp_path / "waymo", "val")) == 2
    (tmp_path / "waymo" / "ImageSets" / "train.txt").write_text("segment-zzz.tfrecord\n")
    with pytest.raises(FileNotFoundError, match="segment-zzz"):
        WaymoNpy(tmp_path / "waymo", "train")


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def test_bad_files_raise_naming_the_file(tmp_path):
    root = tmp_path / "kitti"
    make_kitti(root, lists=False)
    vdir = root / "training" / "velodyne"
    bad_size = vdir / "000001.bin"
    bad_size.write_bytes(bad_size.read_bytes()[:-6])
    nan = _cloud(50, 7)
    nan[3, 1] = np.nan
    nan.tofile(vdir / "000002.bin")
    _cloud(50, 8, lo=(-30, -10, -2), hi=(-1, 10, 0)).tofile(vdir / "000003.bin")  # behind: x < 0
    ds = KittiVelodyne(root, "train", grid="kitti")
    assert len(ds[0]["voxel_features"]) > 0
    with pytest.raises(CorruptPointCloudError, match=r"000001\.bin.*not a multiple of 16"):
        ds[1]
    with pytest.raises(CorruptPointCloudError, match=r"000002\.bin.*1 points with NaN/inf.*row 3"):
        ds[2]
    with pytest.raises(CorruptPointCloudError, match=r"000003\.bin.*inside point_cloud_range"):
        ds[3]
    assert len(KittiVelodyne(root, "train")[3]["points"]) == 50  # no grid: no range check
    (vdir / "000004.bin").write_bytes(b"")
    with pytest.raises(CorruptPointCloudError, match=r"000004\.bin.*no points"):
        KittiVelodyne(root, "train")[4]

    nus = tmp_path / "nus"
    make_nuscenes(nus, 1)
    f = next((nus / "samples" / "LIDAR_TOP").iterdir())
    f.write_bytes(f.read_bytes()[:-16])  # a multiple of 16 but not of 20 bytes
    with pytest.raises(CorruptPointCloudError, match=r"pcd\.bin.*not a multiple of 20"):
        NuScenesLidar(nus)[0]

    wroot = tmp_path / "waymo"
    arrs = make_waymo(wroot, ("seg",), 3)
    seg = wroot / "waymo_processed_data_v0_5_0" / "seg"
    data = (seg / "0000.npy").read_bytes()
    (seg / "0000.npy").write_bytes(data[:-10])  # truncated
    np.save(seg / "0001.npy", arrs[("seg", 1)][:, :5])  # wrong number of columns
    bad = arrs[("seg", 2)].copy()
    bad[5, 3] = np.inf
    np.save(seg / "0002.npy", bad)
    ds = WaymoNpy(wroot)
    with pytest.raises(CorruptPointCloudError, match=r"0000\.npy"):
        ds[0]
    with pytest.raises(CorruptPointCloudError, match=r"0001\.npy.*\(N, 6\)"):
        ds[1]
    with pytest.raises(CorruptPointCloudError, match=r"0002\.npy.*NaN/inf"):
        ds[2]


def test_skip_corrupt_counts_and_missing_listed_files(tmp_path):
    root = tmp_path / "kitti"
    make_kitti(root, n_files=5, lists=False)
    vdir = root / "training" / "velodyne"
    for i in (1, 2):
        (vdir / f"{i:06d}.bin").write_bytes(b"\x00" * 10)
    ds = KittiVelodyne(root, "train", grid=KITTI, skip_corrupt=True)
    s = ds[1]
    assert s["skipped"] == 2 and s["frame_id"].endswith("000003.bin")
    assert ds[3]["skipped"] == 0 and ds[2]["skipped"] == 1
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("000000\n000099\n")
    with pytest.raises(FileNotFoundError, match="000099.bin"):
        KittiVelodyne(root, "train")[1]
    s = KittiVelodyne(root, "train", skip_corrupt=True)[1]
    assert s["skipped"] == 1 and s["frame_id"].endswith("000000.bin")
    (root / "ImageSets" / "val.txt").write_text("000001\n000002\n")
    with pytest.raises(CorruptPointCloudError, match="none of the 2 sweeps"):
        KittiVelodyne(root, "val", skip_corrupt=True)[0]


# --------------------------------------------------------------------------------------
# Collate and DataModule
# --------------------------------------------------------------------------------------


def _check_batch(batch: dict, grid, batch_size: int) -> None:
    b = batch_size
    assert list(batch)[0] == "points" and batch["batch_size"] == b
    assert isinstance(batch["batch_size"], int)
    pts, n = batch["points"], batch["num_points"]
    assert pts.shape[0] == b and pts.shape[2] == 4 and n.shape == (b,)
    assert (
        batch["point_labels"].shape == pts.shape[:2]
        and batch["point_voxel_idx"].shape == pts.shape[:2]
    )
    feats, coords = batch["voxel_features"], batch["voxel_coords"]
    assert coords.dtype == torch.int32 and coords.shape == (len(feats), 4) and feats.shape[1] == 4
    assert batch["voxel_num_points"].shape == (len(feats),)
    assert batch["skipped"].shape == (b,) and len(batch["frame_ids"]) == b
    # Batch index: contiguous blocks 0..B-1 in order.
    assert torch.equal(coords[:, 0], coords[:, 0].sort().values)
    assert set(coords[:, 0].tolist()) <= set(range(b))
    assert (coords[:, 1:] >= 0).all()
    assert (coords[:, 1:] < torch.tensor(grid.sparse_shape)).all()
    for i in range(b):
        k = int(n[i])
        assert (batch["point_voxel_idx"][i, k:] == -1).all() and (
            batch["point_labels"][i, k:] == -1
        ).all()
        idx = batch["point_voxel_idx"][i, :k]
        ok = idx >= 0
        assert ok.any()
        assert (coords[idx[ok], 0] == i).all()
        cxyz, inside = grid.voxel_coords(pts[i, :k])
        assert not (ok & ~inside).any()  # max_voxels may drop in-range points, nothing else
        assert torch.equal(coords[idx[ok], 1:].long(), cxyz[ok].flip(1))
        # The feature of a voxel with one point is that point.
        single = batch["voxel_num_points"][idx[ok]] == 1
        if single.any():
            j = torch.nonzero(single)[0, 0]
            torch.testing.assert_close(feats[idx[ok][j]], pts[i, :k][ok][j])


def test_collate_synthetic_batch_and_voxelisation():
    ds = SyntheticLidar(2, seed=1, grid="kitti", max_voxels=40000)
    samples = [ds[0], ds[1]]
    batch = collate_lidar(samples)
    _check_batch(batch, KITTI, 2)
    assert torch.equal(batch["point_labels"][1, : len(samples[1]["labels"])], samples[1]["labels"])
    nv0 = len(samples[0]["voxel_features"])
    assert (batch["voxel_coords"][:nv0, 0] == 0).all() and (
        batch["voxel_coords"][nv0:, 0] == 1
    ).all()


@pytest.mark.parametrize("name", ["kitti", "nuscenes", "waymo"])
def test_datamodule_real_formats(tmp_path, name):
    root = tmp_path / name
    {"kitti": make_kitti, "nuscenes": make_nuscenes, "waymo": make_waymo}[name](root)
    grid = {"kitti": KITTI, "nuscenes": NUSCENES, "waymo": WAYMO}[name]
    dm = LidarDataModule(dataset=name, root=str(root), grid=name, batch_size=2)
    assert dm.grid == grid
    batch = next(iter(dm.train_dataloader()))
    _check_batch(batch, grid, 2)
    val = list(dm.val_dataloader())
    assert sum(b["batch_size"] for b in val) == len(dm.val_set)
    tr, te = dm.eval_dataloaders()
    assert [f for b in tr for f in b["frame_ids"]] == [str(f) for f in dm._eval_sets[0].files]
    assert len(te.dataset) == len(dm.val_set)


def test_datamodule_workers_skip_and_grid_overrides(tmp_path):
    root = tmp_path / "kitti"
    make_kitti(root, n_files=4, lists=False)
    (root / "training" / "velodyne" / "000002.bin").write_bytes(b"\x00" * 7)
    dm = LidarDataModule(
        dataset="kitti", root=str(root), grid="kitti", voxel_size=[0.2, 0.2, 0.2],
        batch_size=4, num_workers=1, skip_corrupt=True, max_voxels=0,
    )  # fmt: skip
    assert dm.grid.grid_size == (352, 400, 20) and dm.grid.max_points_per_voxel == 5
    batch = next(iter(dm.eval_dataloaders()[0]))  # loads in a worker process
    assert batch["skipped"].tolist() == [0, 0, 1, 0]
    _check_batch(batch, dm.grid, 4)
    assert dm.grid.name == "kitti+custom"
    assert resolve_grid("nuscenes", list(NUSCENES.point_cloud_range)).name == "nuscenes"
    custom = resolve_grid(None, [-10, -10, -2, 10, 10, 2], [0.5, 0.5, 0.5], 3)
    assert custom.sparse_shape == (9, 40, 40) and custom.max_voxels_train is None
    with pytest.raises(ValueError, match="grid must be one of"):
        resolve_grid("argo")
    with pytest.raises(ValueError, match="root"):
        LidarDataModule(dataset="kitti", root=None)
    with pytest.raises(ValueError, match="dataset must be"):
        LidarDataModule(dataset="argoverse")


def test_augment_and_shuffle_only_in_train():
    dm = LidarDataModule(num_train=2, num_val=1, batch_size=2, augment=True, shuffle_points=True)
    dm.setup()
    assert dm.train_set.augment is not None and dm.train_set.shuffle_points
    assert dm.val_set.augment is None and not dm.val_set.shuffle_points
    assert dm.train_set.max_voxels == 16000 and dm.val_set.max_voxels == 40000
    pts = SyntheticLidar(1)[0]["points"]
    aug = GlobalAugment(flip=False, rotation=(0.5, 0.5), scale=(2.0, 2.0))(pts)
    torch.testing.assert_close(aug[:, :3].norm(dim=1), 2 * pts[:, :3].norm(dim=1))
    torch.testing.assert_close(aug[:, 3], pts[:, 3])


def test_hydra_configs_instantiate(compose_train, tmp_path):
    cfg = compose_train(["data=synthetic_lidar", "seed=3", "data.num_train=4", "data.num_val=2"])
    assert cfg.data.beams == 32 and cfg.data.batch_size == 2 and cfg.data.num_workers == 0
    dm = instantiate(cfg.data)
    assert isinstance(dm, LidarDataModule) and dm.grid == KITTI and dm.hparams.seed == 3
    assert dm.grid.name == "kitti" and dm.grid.max_voxels_train == 16000  # explicit = preset
    assert tuple(cfg.data.voxel_size) == KITTI.voxel_size  # model configs interpolate these
    batch = next(iter(dm.train_dataloader()))
    _check_batch(batch, KITTI, 2)
    for i, k in enumerate(batch["num_points"].tolist()):
        assert (batch["point_labels"][i, :k] >= 0).all()
    make_kitti(tmp_path / "kitti")
    make_nuscenes(tmp_path / "nus")
    make_waymo(tmp_path / "waymo")
    for name, sub, grid in (
        ("kitti", "kitti", KITTI),
        ("nuscenes", "nus", NUSCENES),
        ("waymo", "waymo", WAYMO),
    ):
        cfg = compose_train([f"data={name}", f"data.root={tmp_path / sub}"])
        dm = instantiate(cfg.data)
        assert dm.dataset == name and dm.grid == grid
        dm.setup()
        assert len(dm.train_set) > 0
