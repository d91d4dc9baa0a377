"""Tests for maskfm.data.points: synthetic shapes, on-disk formats, bad files, DataModule."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from maskfm.data import convert_modelnet_cache
from maskfm.data.points import (
    CLASSES,
    SCANOBJECTNN_CLASSES,
    CorruptPointCloudError,
    ModelNet40,
    PointCloudDataModule,
    ScanObjectNN,
    ShapeNet55,
    SyntheticShapes3D,
    UntrustedPickleError,
    load_point_cache,
    pc_normalize,
    scale_and_translate,
)
from maskfm.data.synthetic_shapes import _CUBE, sample_surface
from maskfm.tokens.group import farthest_point_sample

try:  # ScanObjectNN tests need h5py (a dependency of maskfm.data.points.ScanObjectNN)
    import h5py
except ImportError:  # pragma: no cover
    h5py = None
needs_h5py = pytest.mark.skipif(h5py is None, reason="h5py is not installed")

STORED = 64  # points per stored cloud in the tiny fixtures
NP = 32  # points requested

# ----------------------------------------------------------------------------- helpers


def _blob(seed: int, n: int = STORED, cols: int = 3) -> np.ndarray:
    """A random off-centre, non-unit cloud (n, cols) float32."""
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3)) * rng.uniform(0.5, 3.0, size=3) + rng.uniform(-5, 5, size=3)
    if cols > 3:
        pts = np.concatenate([pts, rng.normal(size=(n, cols - 3))], axis=1)
    return pts.astype(np.float32)


def _assert_unit(points: torch.Tensor) -> None:
    assert torch.allclose(points.mean(0), torch.zeros(3), atol=1e-5)
    assert points.norm(dim=1).max().item() == pytest.approx(1.0, abs=1e-5)


SYNSETS = ("02691156", "03001627", "04379243")


def make_shapenet(root: Path, lists_in_subdir: bool = True) -> Path:
    """3 synsets; train lists 2 shapes each, test 1 each; STORED points per .npy."""
    (root / "shapenet_pc").mkdir(parents=True)
    ldir = root / "ShapeNet-55" if lists_in_subdir else root
    ldir.mkdir(exist_ok=True)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for c, syn in enumerate(SYNSETS):
        for i in range(3):
            name = f"{syn}-model{i}.npy"
            np.save(root / "shapenet_pc" / name, _blob(10 * c + i))
            lines["train" if i < 2 else "test"].append(name)
    for split, names in lines.items():
        (ldir / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


MN_CLASSES = ("airplane", "bed", "chair")


def _mn_write(path: Path, pts: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, pts, delimiter=",", fmt="%.6f")


def make_modelnet(root: Path, raw: bool = True) -> Path:
    """3 classes; train 2 shapes each, test 1 each; STORED rows x,y,z,nx,ny,nz per file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(MN_CLASSES) + "\n")
    ids = {"train": [], "test": []}
    for c, cls in enumerate(MN_CLASSES):
        for i in range(3):
            sid = f"{cls}_{i + 1:04d}"
            ids["train" if i < 2 else "test"].append(sid)
            if raw:
                _mn_write(root / cls / f"{sid}.txt", _blob(100 + 10 * c + i, cols=6))
    for split, names in ids.items():
        (root / f"modelnet40_{split}.txt").write_text("\n".join(names) + "\n")
    return root


def make_dat(root: Path, split: str = "train", n_pts: int = STORED) -> Path:
    """The original pickled cache: [list of float32 (P, 6), list of int32 (1,)]."""
    lines = (root / f"modelnet40_{split}.txt").read_text().split()
    pts = [_blob(500 + i, n_pts, cols=6) for i in range(len(lines))]
    labels = [np.array([MN_CLASSES.index(s.rsplit("_", 1)[0])], dtype=np.int32) for s in lines]
    path = root / f"modelnet40_{split}_8192pts_fps.dat"
    with open(path, "wb") as f:
        pickle.dump([pts, labels], f)
    return path


def make_scan(root: Path, variant: str = "obj_bg", n: int = 6, p: int = STORED) -> dict[str, Path]:
    sub, pattern = {
        "obj_bg": ("main_split", "{}_objectdataset.h5"),
        "obj_only": ("main_split_nobg", "{}_objectdataset.h5"),
        "hardest": ("main_split", "{}_objectdataset_augmentedrot_scale75.h5"),
    }[variant]
    out = {}
    for k, (split, name) in enumerate((("train", "training"), ("test", "test"))):
        path = root / sub / pattern.format(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = np.stack([_blob(1000 * k + i, p) for i in range(n)])
        with h5py.File(path, "w") as f:
            f["data"] = data
            f["label"] = np.arange(n) % 15
        out[split] = path
    return out


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_sample_keys_shape_and_unit_sphere():
    ds = SyntheticShapes3D(len(CLASSES), num_points=256)
    assert len(ds) == len(CLASSES) and len(CLASSES) >= 12
    labels = []
    for i in range(len(ds)):
        s = ds[i]
        assert set(s) == {"points", "label", "skipped"} and s["skipped"] == 0
        p = s["points"]
        assert p.shape == (256, 3) and p.dtype == torch.float32
        _assert_unit(p)
        # not degenerate: distinct points spanning at least two directions
        assert torch.unique(p, dim=0).shape[0] == 256
        sv = torch.linalg.svdvals(p - p.mean(0))
        assert sv[1] > 0.1 * sv[0]
        labels.append(s["label"])
    assert sorted(labels) == list(range(len(CLASSES)))  # every class, balanced by index
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_synthetic_deterministic_by_seed_and_split():
    a = SyntheticShapes3D(4, 128, seed=3)
    b = SyntheticShapes3D(4, 128, seed=3)
    assert all(torch.equal(a[i]["points"], b[i]["points"]) for i in range(4))
    other = SyntheticShapes3D(4, 128, seed=4)
    test = SyntheticShapes3D(4, 128, seed=3, split="test")
    for i in range(4):
        assert not torch.allclose(a[i]["points"], other[i]["points"])
        assert not torch.allclose(a[i]["points"], test[i]["points"])
    with pytest.raises(ValueError):
        SyntheticShapes3D(4, split="val")


def test_synthetic_1024_point_samples_are_pure_functions_of_the_index():
    """Any access order (or a DataLoader worker) gets the same sample. The time per sample is
    measured by ``python -m maskfm.bench +experiment=point_mae`` (``bench.dataset_samples``)."""
    ds = SyntheticShapes3D(200, 1024)
    forward = [ds[i]["points"] for i in range(30)]
    for i in reversed(range(30)):
        s = ds[i]
        assert torch.equal(s["points"], forward[i]) and s["label"] == i % len(CLASSES)
        assert s["points"].shape == (1024, 3) and s["points"].dtype == torch.float32
        assert torch.isfinite(s["points"]).all() and s["points"].norm(dim=1).max() <= 1 + 1e-5
    assert torch.equal(ds[-200]["points"], forward[0])
    assert len({tuple(p[0].tolist()) for p in forward}) == 30  # no two samples alike


def test_surface_sampling_is_area_uniform_under_stretch():
    scale = np.array([1.0, 2.0, 0.5])
    p = sample_surface([_CUBE], scale, np.random.default_rng(0), 60000)
    a, b, c = scale
    total = a * b + b * c + c * a
    for axis, area in ((0, b * c), (1, a * c), (2, a * b)):
        frac = np.isclose(np.abs(p[:, axis]), scale[axis]).mean()
        assert frac == pytest.approx(area / total, abs=0.01)


# ----------------------------------------------------------------------------- ShapeNet-55


def test_shapenet_reads_lists_labels_and_normalises(tmp_path):
    root = make_shapenet(tmp_path / "sn")
    train = ShapeNet55(root, "train", num_points=NP)
    test = ShapeNet55(root, "test", num_points=NP)
    assert len(train) == 6 and len(test) == 3
    assert train.classes == sorted(SYNSETS) and train.num_classes == 3
    assert [train[i]["label"] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    s = train[1]
    assert s["points"].shape == (NP, 3) and s["points"].dtype == torch.float32
    _assert_unit(s["points"])
    # a random subset of the stored points (each call differs), pc_norm'ed
    stored = torch.from_numpy(
        pc_normalize(np.load(root / "shapenet_pc" / f"{SYNSETS[0]}-model1.npy"))
    )
    assert not torch.equal(train[1]["points"], train[1]["points"])
    det = ShapeNet55(root, "train", num_points=NP, deterministic=True)
    assert torch.equal(det[1]["points"], det[1]["points"])
    assert torch.allclose(ShapeNet55(root, "train", num_points=STORED, deterministic=True)[1]["points"]
                          .sort(0).values, stored.sort(0).values, atol=1e-5)  # fmt: skip
    whole = ShapeNet55(root, "train", num_points=NP, whole=True)
    assert len(whole) == 9


def test_shapenet_lists_in_root_accepted(tmp_path):
    root = make_shapenet(tmp_path / "sn", lists_in_subdir=False)
    assert len(ShapeNet55(root, "test", num_points=NP)) == 3


def test_shapenet_missing_root_list_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        ShapeNet55(tmp_path / "nope", "train")
    root = make_shapenet(tmp_path / "sn")
    (root / "ShapeNet-55" / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test.txt"):
        ShapeNet55(root, "test")
    (root / "shapenet_pc").rename(root / "moved")
    with pytest.raises(FileNotFoundError, match="shapenet_pc"):
        ShapeNet55(root, "train")


def _break_npy(path: Path, kind: str) -> None:
    if kind == "two_columns":
        np.save(path, _blob(0)[:, :2])
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "nan":
        pts = _blob(0)
        pts[5, 1] = np.nan
        np.save(path, pts)
    elif kind == "inf":
        pts = _blob(0)
        pts[0, 0] = np.inf
        np.save(path, pts)
    elif kind == "too_few":
        np.save(path, _blob(0, n=NP - 1))
    elif kind == "not_an_array":
        path.write_text("hello")
    elif kind == "constant":
        np.save(path, np.ones((STORED, 3), np.float32))
    elif kind == "missing":
        path.unlink()


@pytest.mark.parametrize(
    "kind, match",
    [
        ("two_columns", "shape"),
        ("truncated", "cannot read"),
        ("nan", "NaN/inf"),
        ("inf", "NaN/inf"),
        ("too_few", "fewer than"),
        ("not_an_array", "cannot read"),
        ("constant", "coincide"),
        ("missing", "does not exist"),
    ],
)
def test_shapenet_bad_files_raise_or_skip(tmp_path, kind, match):
    root = make_shapenet(tmp_path / "sn")
    bad = root / "shapenet_pc" / f"{SYNSETS[1]}-model0.npy"  # train index 2
    _break_npy(bad, kind)
    ds = ShapeNet55(root, "train", num_points=NP)
    exc = FileNotFoundError if kind == "missing" else CorruptPointCloudError
    with pytest.raises(exc, match=match) as info:
        ds[2]
    assert str(bad) in str(info.value)
    if kind == "missing":  # names the list file and line too
        assert "train.txt" in str(info.value) and "line 3" in str(info.value)
    assert ds[1]["skipped"] == 0
    skipping = ShapeNet55(root, "train", num_points=NP, skip_corrupt=True)
    s = skipping[2]
    assert s["skipped"] == 1 and s["label"] == 1  # sample 3 (same synset) served instead
    assert skipping[3]["skipped"] == 0


def test_shapenet_malformed_list_line(tmp_path):
    root = make_shapenet(tmp_path / "sn")
    lst = root / "ShapeNet-55" / "train.txt"
    lst.write_text(lst.read_text() + "not-a-cloud.txt\n")
    with pytest.raises(CorruptPointCloudError, match="line 7"):
        ShapeNet55(root, "train", num_points=NP)


# ----------------------------------------------------------------------------- ModelNet40


def _raw_xyz(root: Path, sid: str) -> np.ndarray:
    return np.loadtxt(root / sid.rsplit("_", 1)[0] / f"{sid}.txt", delimiter=",", dtype=np.float32)[
        :, :3
    ]


def test_modelnet_raw_fps_cache_written_and_reused(tmp_path):
    root = make_modelnet(tmp_path / "mn")
    test = ModelNet40(root, "test", num_points=NP)
    cache = root / f"modelnet40_test_{NP}pts_fps.npz"
    assert cache.is_file() and test.cache_path == cache
    assert len(test) == 3 and test.classes == list(MN_CLASSES) and test.num_classes == 3
    assert [test[i]["label"] for i in range(3)] == [0, 1, 2]
    # pc_normalize on all rows, then FPS from index 0
    xyz = pc_normalize(_raw_xyz(root, "bed_0003"))
    idx = farthest_point_sample(torch.from_numpy(xyz)[None], NP)[0]
    assert torch.allclose(test[1]["points"], torch.from_numpy(xyz)[idx], atol=1e-6)
    assert test[1]["points"].norm(dim=1).max() <= 1 + 1e-6

    mtime = cache.stat().st_mtime_ns
    (root / "bed" / "bed_0003.txt").unlink()  # the raw files are no longer needed
    again = ModelNet40(root, "test", num_points=NP)
    assert cache.stat().st_mtime_ns == mtime
    assert torch.equal(again[1]["points"], test[1]["points"])
    # a different num_points gets its own cache
    ModelNet40(make_modelnet(tmp_path / "mn2"), "test", num_points=16)
    assert (tmp_path / "mn2" / "modelnet40_test_16pts_fps.npz").is_file()


def test_modelnet_train_shuffles_order_and_first_sampling(tmp_path):
    root = make_modelnet(tmp_path / "mn")
    train = ModelNet40(root, "train", num_points=NP)
    det = ModelNet40(root, "train", num_points=NP, deterministic=True)
    a, b = train[0]["points"], det[0]["points"]
    assert not torch.equal(a, b) and torch.equal(a.sort(0).values, b.sort(0).values)
    first = ModelNet40(root, "test", num_points=NP, sampling="first")
    expect = pc_normalize(_raw_xyz(root, "airplane_0003")[:NP])
    assert np.allclose(first[0]["points"].numpy(), expect, atol=1e-6)
    assert (root / f"modelnet40_test_{NP}pts_first.npz").is_file()


def test_modelnet_cache_dir_for_read_only_root(tmp_path):
    root = make_modelnet(tmp_path / "mn")
    ds = ModelNet40(root, "test", num_points=NP, cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / f"modelnet40_test_{NP}pts_fps.npz").is_file()
    assert not (root / f"modelnet40_test_{NP}pts_fps.npz").exists()
    assert len(ds) == 3


def test_modelnet_unwritable_cache_kept_in_memory(tmp_path, monkeypatch, caplog):
    import maskfm.data.points.modelnet as points_module

    def read_only(path, *args, **kwargs):
        raise PermissionError(f"read-only: {path}")

    monkeypatch.setattr(points_module, "save_point_cache", read_only)
    root = make_modelnet(tmp_path / "mn")
    ds = ModelNet40(root, "test", num_points=NP)
    assert len(ds) == 3 and ds[0]["points"].shape == (NP, 3)
    assert not list(root.glob("*.npz"))
    assert "cache_dir" in caplog.text


def test_pc_normalize():
    pts = _blob(3)
    out = pc_normalize(pts)
    assert np.allclose(out.mean(0), 0, atol=1e-6) and np.isclose(
        np.linalg.norm(out, axis=1).max(), 1
    )
    batch = pc_normalize(np.stack([pts, 2 * pts]))
    assert np.allclose(batch[0], out, atol=1e-6) and np.allclose(batch[1], out, atol=1e-6)
    with pytest.raises(ValueError, match="coincide"):
        pc_normalize(np.ones((5, 3)))


def test_modelnet_dat_refused_without_trust_and_read_with_it(tmp_path):
    root = make_modelnet(tmp_path / "mn", raw=False)
    dat = make_dat(root, "train")
    with pytest.raises(UntrustedPickleError, match="convert_modelnet_cache") as info:
        ModelNet40(root, "train", num_points=NP)
    assert str(dat) in str(info.value) and "trust_pickle" in str(info.value)
    ds = ModelNet40(root, "train", num_points=NP, trust_pickle=True)
    assert len(ds) == 6 and [ds[i]["label"] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    # the safe derived cache it wrote is reused later without unpickling anything
    assert ModelNet40(root, "train", num_points=NP).cache_path.suffix == ".npz"
    with open(dat, "rb") as f:
        pts, _ = pickle.load(f)
    xyz = pc_normalize(pts[4][:, :3])
    idx = farthest_point_sample(torch.from_numpy(xyz)[None], NP)[0]
    assert torch.allclose(ModelNet40(root, "train", NP, trust_pickle=True, deterministic=True)[4]["points"],
                          torch.from_numpy(xyz)[idx], atol=1e-6)  # fmt: skip


def test_converter_round_trip_and_npz_sources(tmp_path):
    root = make_modelnet(tmp_path / "mn", raw=False)
    dat = make_dat(root, "test")
    out = tmp_path / "converted.npz"
    assert convert_modelnet_cache.main([str(dat), str(out)]) == 0
    with open(dat, "rb") as f:
        pts, labels = pickle.load(f)
    data = load_point_cache(out)
    assert np.array_equal(data["points"], np.stack(pts))
    assert np.array_equal(data["labels"], np.concatenate(labels))
    assert data["points"].dtype == np.float32 and data["labels"].dtype == np.int64
    # the npz is pickle-free
    with np.load(out, allow_pickle=False) as z:
        assert "points" in z.files

    via_arg = ModelNet40(root, "test", num_points=NP, cache_file=out, deterministic=True)
    dat.unlink()
    os.replace(out, root / "modelnet40_test_8192pts_fps.npz")  # found by its name
    found = ModelNet40(root, "test", num_points=NP, deterministic=True)
    for i in range(3):  # normalised before FPS: inside the unit sphere
        assert 0.9 < found[i]["points"].norm(dim=1).max() <= 1 + 1e-6
        assert torch.equal(found[i]["points"], via_arg[i]["points"])


def test_converter_refuses_non_numpy_globals(tmp_path):
    evil = tmp_path / "evil.dat"
    evil.write_bytes(pickle.dumps([[os.getcwd], [np.array([0])]]))  # references posix.getcwd
    with pytest.raises(CorruptPointCloudError, match="refusing"):
        convert_modelnet_cache.read_pickled_cache(evil)
    assert convert_modelnet_cache.main([str(evil), str(tmp_path / "o.npz")]) == 1


def _break_txt(path: Path, kind: str) -> None:
    rows = path.read_text().splitlines()
    if kind == "five_columns":
        rows[3] = ",".join(rows[3].split(",")[:5])
        path.write_text("\n".join(rows) + "\n")
    elif kind == "nan":
        rows[2] = "nan," + rows[2].split(",", 1)[1]
        path.write_text("\n".join(rows) + "\n")
    elif kind == "too_few":
        path.write_text("\n".join(rows[: NP - 1]) + "\n")
    elif kind == "empty":
        path.write_text("")
    elif kind == "garbage":
        path.write_text("x,y,z\n" * 40)
    elif kind == "constant":
        path.write_text("1,2,3,0,0,1\n" * STORED)
    elif kind == "missing":
        path.unlink()


@pytest.mark.parametrize(
    "kind, match",
    [
        ("five_columns", "cannot parse"),
        ("nan", "NaN/inf"),
        ("too_few", "fewer than"),
        ("empty", "shape"),
        ("garbage", "cannot parse"),
        ("constant", "coincide"),
        ("missing", "does not exist"),
    ],
)
def test_modelnet_bad_raw_files_raise_or_skip(tmp_path, kind, match):
    root = make_modelnet(tmp_path / "mn")
    bad = root / "bed" / "bed_0001.txt"  # train index 2
    _break_txt(bad, kind)
    exc = FileNotFoundError if kind == "missing" else CorruptPointCloudError
    with pytest.raises(exc, match=match) as info:
        ModelNet40(root, "train", num_points=NP)
    assert str(bad) in str(info.value)
    if kind == "missing":
        assert "modelnet40_train.txt" in str(info.value) and "line 3" in str(info.value)
    assert not (root / f"modelnet40_train_{NP}pts_fps.npz").exists()

    ds = ModelNet40(root, "train", num_points=NP, skip_corrupt=True)
    assert len(ds) == 6
    s = ds[2]
    assert s["skipped"] == 1 and s["label"] == 1  # bed_0002 served instead
    assert ds[3]["skipped"] == 0 and ds[1]["skipped"] == 0
    # the cache records the skipped shape; reusing it without skip_corrupt is refused
    with pytest.raises(CorruptPointCloudError, match="skip_corrupt"):
        ModelNet40(root, "train", num_points=NP)


def test_modelnet_missing_files_and_unknown_class(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        ModelNet40(tmp_path / "absent", "train")
    root = make_modelnet(tmp_path / "mn")
    (root / "modelnet40_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="modelnet40_test.txt"):
        ModelNet40(root, "test", num_points=NP)
    lst = root / "modelnet40_train.txt"
    lst.write_text(lst.read_text() + "sofa_0001\n")
    with pytest.raises(CorruptPointCloudError, match="line 7"):
        ModelNet40(root, "train", num_points=NP)
    (root / "modelnet40_shape_names.txt").unlink()
    with pytest.raises(FileNotFoundError, match="modelnet40_shape_names.txt"):
        ModelNet40(root, "train", num_points=NP)


def test_modelnet_bad_converted_cache(tmp_path):
    root = make_modelnet(tmp_path / "mn", raw=False)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CorruptPointCloudError, match="bad.npz"):
        ModelNet40(root, "test", num_points=NP, cache_file=bad)
    short = tmp_path / "short.npz"
    np.savez(short, points=np.zeros((2, STORED, 6), np.float32), labels=np.zeros(2, np.int64))
    with pytest.raises(CorruptPointCloudError, match="holds 2 shapes"):
        ModelNet40(root, "test", num_points=NP, cache_file=short)


# ----------------------------------------------------------------------------- ScanObjectNN


@needs_h5py
@pytest.mark.parametrize("variant", ["obj_bg", "obj_only", "hardest"])
def test_scanobjectnn_variants_raw_coordinates(tmp_path, variant):
    paths = make_scan(tmp_path / "scan", variant)
    with h5py.File(paths["test"]) as f:
        stored = torch.from_numpy(f["data"][()])
    test = ScanObjectNN(tmp_path / "scan", "test", variant, num_points=STORED)
    assert len(test) == 6 and test.num_classes == 15 and test.classes == list(SCANOBJECTNN_CLASSES)
    assert torch.equal(test[4]["points"], stored[4]) and test[4]["label"] == 4  # untouched
    train = ScanObjectNN(tmp_path / "scan", "train", variant, num_points=STORED)
    with h5py.File(paths["train"]) as f:
        row = torch.from_numpy(f["data"][2])
    p = train[2]["points"]
    assert not torch.equal(p, row) and torch.equal(p.sort(0).values, row.sort(0).values)


@needs_h5py
def test_scanobjectnn_subsampling(tmp_path):
    paths = make_scan(tmp_path / "scan")
    with h5py.File(paths["test"]) as f:
        stored = torch.from_numpy(f["data"][()])
    fps = ScanObjectNN(tmp_path / "scan", "test", num_points=NP)
    idx = farthest_point_sample(stored[1:2], NP)[0]
    assert torch.equal(fps[1]["points"], stored[1][idx])
    first = ScanObjectNN(tmp_path / "scan", "test", num_points=NP, test_sampling="first")
    assert torch.equal(first[1]["points"], stored[1][:NP])
    train = ScanObjectNN(tmp_path / "scan", "train", num_points=NP)
    with h5py.File(paths["train"]) as f:
        row = f["data"][0]
    sub = train[0]["points"].numpy()
    assert sub.shape == (NP, 3)
    assert all((row == q).all(axis=1).any() for q in sub)  # a subset of the stored points


def _rewrite_h5(path: Path, **datasets) -> None:
    with h5py.File(path) as f:
        current = {k: f[k][()] for k in f}
    current.update(datasets)
    path.unlink()
    with h5py.File(path, "w") as f:
        for k, v in current.items():
            if v is not None:
                f[k] = v


@needs_h5py
@pytest.mark.parametrize(
    "kind, match",
    [
        ("two_columns", "'data' must be"),
        ("flat", "'data' must be"),
        ("label_length", "5 in 'label'"),
        ("no_label", "lacks"),
        ("truncated", "cannot read HDF5"),
        ("too_few", "fewer than"),
    ],
)
def test_scanobjectnn_bad_files_raise(tmp_path, kind, match):
    path = make_scan(tmp_path / "scan")["train"]
    data = np.stack([_blob(i) for i in range(6)])
    if kind == "two_columns":
        _rewrite_h5(path, data=data[..., :2])
    elif kind == "flat":
        _rewrite_h5(path, data=data.reshape(6, -1))
    elif kind == "label_length":
        _rewrite_h5(path, label=np.arange(5))
    elif kind == "no_label":
        _rewrite_h5(path, label=None)
    elif kind == "truncated":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 3])
    need = STORED + 1 if kind == "too_few" else NP
    for skip in (False, True):  # a whole-file problem cannot be skipped
        with pytest.raises(CorruptPointCloudError, match=match) as info:
            ScanObjectNN(tmp_path / "scan", "train", num_points=need, skip_corrupt=skip)
        assert str(path) in str(info.value)


@needs_h5py
def test_scanobjectnn_bad_rows_raise_or_skip(tmp_path):
    path = make_scan(tmp_path / "scan")["train"]
    data = np.stack([_blob(i) for i in range(6)])
    data[3, 7, 2] = np.nan
    labels = np.arange(6) % 15
    labels[4] = 99
    _rewrite_h5(path, data=data, label=labels)
    with pytest.raises(CorruptPointCloudError, match="2 unusable rows") as info:
        ScanObjectNN(tmp_path / "scan", "train", num_points=NP)
    assert str(path) in str(info.value) and "row 3" in str(info.value)
    ds = ScanObjectNN(tmp_path / "scan", "train", num_points=NP, skip_corrupt=True)
    assert len(ds) == 6
    s = ds[3]
    assert s["skipped"] == 2 and s["label"] == 5
    assert ds[2]["skipped"] == 0


@needs_h5py
def test_scanobjectnn_missing_file(tmp_path):
    make_scan(tmp_path / "scan", "obj_bg")
    with pytest.raises(FileNotFoundError, match="main_split_nobg"):
        ScanObjectNN(tmp_path / "scan", "train", "obj_only")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ScanObjectNN(tmp_path / "nowhere", "train")


# ----------------------------------------------------------------------------- augmentation


def test_scale_and_translate_ranges_and_generator():
    b = 256
    zeros_ones = torch.stack([torch.zeros(3), torch.ones(3)]).expand(b, 2, 3).contiguous()
    out = scale_and_translate(zeros_ones, generator=torch.Generator().manual_seed(0))
    shift = out[:, 0]
    scale = out[:, 1] - out[:, 0]
    assert shift.abs().max() <= 0.2 and shift.abs().max() > 0.15
    assert scale.min() >= 2 / 3 - 1e-6 and scale.max() <= 3 / 2 + 1e-6
    assert scale.min() < 0.75 and scale.max() > 1.4
    assert not torch.allclose(scale[:, 0], scale[:, 1])  # per axis
    assert not torch.allclose(scale[0], scale[1])  # per sample
    again = scale_and_translate(zeros_ones, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    six = torch.cat([zeros_ones, torch.full((b, 2, 3), 7.0)], dim=-1)
    out6 = scale_and_translate(six)
    assert out6.shape == (b, 2, 6) and torch.equal(out6[..., 3:], six[..., 3:])
    assert scale_and_translate(torch.ones(5, 3)).shape == (5, 3)


def test_augmentation_only_while_training():
    dm = PointCloudDataModule(batch_size=4, num_train=8, num_val=4, num_points=64)
    batch = next(iter(dm.train_dataloader()))
    assert batch["points"].shape == (4, 64, 3)
    assert dm.on_after_batch_transfer(batch, 0) is batch  # no trainer attached
    dm.trainer = SimpleNamespace(training=False)
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)["points"], batch["points"])
    dm.trainer = SimpleNamespace(training=True)
    out = dm.on_after_batch_transfer(batch, 0)
    assert out["points"].shape == batch["points"].shape
    assert not torch.allclose(out["points"], batch["points"])
    assert torch.equal(out["label"], batch["label"])
    off = PointCloudDataModule(batch_size=4, num_train=8, num_val=4, num_points=64, augment=False)
    off.trainer = SimpleNamespace(training=True)
    assert torch.equal(off.on_after_batch_transfer(batch, 0)["points"], batch["points"])


# ----------------------------------------------------------------------------- DataModule


def test_datamodule_synthetic_loaders():
    dm = PointCloudDataModule(num_points=128, batch_size=8, num_train=20, num_val=10)
    assert dm.num_classes == len(CLASSES) and dm.class_names == list(CLASSES)
    assert dm.batch_size == 8 and dm.hparams.num_train == 20
    train = list(dm.train_dataloader())
    assert len(train) == 2 and train[0]["points"].shape == (8, 128, 3)  # drop_last
    val = list(dm.val_dataloader())
    assert [len(b["label"]) for b in val] == [8, 2]
    tr, te = dm.eval_dataloaders()
    first = [b["points"] for b in tr]
    assert sum(len(p) for p in first) == 20 and sum(len(b["label"]) for b in te) == 10
    assert all(torch.equal(a, b["points"]) for a, b in zip(first, tr, strict=True))  # unshuffled
    with pytest.raises(ValueError, match="num_train"):
        PointCloudDataModule(batch_size=64, num_train=32)
    with pytest.raises(ValueError, match="dataset"):
        PointCloudDataModule(dataset="kitti")
    with pytest.raises(ValueError, match="root"):
        PointCloudDataModule(dataset="modelnet40")
    with pytest.raises(ValueError, match="variant"):
        PointCloudDataModule(variant="hardest")


@needs_h5py
def test_datamodule_real_formats(tmp_path):
    sn = make_shapenet(tmp_path / "sn")
    mn = make_modelnet(tmp_path / "mn")
    make_scan(tmp_path / "scan", "hardest")

    dm = PointCloudDataModule("shapenet55", root=str(sn), num_points=NP, batch_size=2,
                              eval_dataset="modelnet40", eval_root=str(mn))  # fmt: skip
    assert dm.num_classes == 3 and dm.class_names == sorted(SYNSETS)
    assert dm.eval_num_classes == 3 and dm.eval_class_names == list(MN_CLASSES)
    dm.prepare_data()
    assert (mn / f"modelnet40_train_{NP}pts_fps.npz").is_file()
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["points"].shape == (2, NP, 3) and b["skipped"].tolist() == [0, 0]
    assert len(list(dm.val_dataloader())) == 2  # 3 test shapes, batch 2, no drop_last
    tr, te = dm.eval_dataloaders()
    labels = torch.cat([x["label"] for x in tr]).tolist()
    assert labels == [0, 0, 1, 1, 2, 2]
    p1 = torch.cat([x["points"] for x in tr])
    p2 = torch.cat([x["points"] for x in dm.eval_dataloaders()[0]])
    assert torch.equal(p1, p2)  # deterministic (no shuffled point order)

    mdm = PointCloudDataModule("modelnet40", root=str(mn), num_points=NP, batch_size=3)
    assert len(list(mdm.train_dataloader())) == 2
    sdm = PointCloudDataModule("scanobjectnn", root=str(tmp_path / "scan"), variant="hardest",
                               num_points=STORED, batch_size=3)  # fmt: skip
    assert sdm.num_classes == 15
    vb = next(iter(sdm.val_dataloader()))
    assert vb["points"].shape == (3, STORED, 3)
    assert len(sdm.eval_dataloaders()[0].dataset) == 6


@needs_h5py
def test_hydra_configs_instantiate(compose_train, tmp_path):
    cfg = compose_train(["data=synthetic_shapes", "seed=5", "data.num_train=64", "data.num_val=16"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, PointCloudDataModule)
    assert dm.hparams.seed == 5 and dm.batch_size == 32 and dm.num_points == 1024
    mn = make_modelnet(tmp_path / "mn")
    cfg = compose_train(["data=modelnet40", f"data.root={mn}", f"data.num_points={NP}"])
    assert instantiate(cfg.data).num_classes == 3
    sn = make_shapenet(tmp_path / "sn")
    cfg = compose_train(["data=shapenet55", f"data.root={sn}"])
    assert cfg.data.batch_size == 128 and instantiate(cfg.data).num_classes == 3
    make_scan(tmp_path / "scan", "hardest")
    cfg = compose_train(["data=scanobjectnn", f"data.root={tmp_path / 'scan'}"])
    dm = instantiate(cfg.data)
    assert dm.variant == "hardest" and dm.num_points == 2048 and dm.num_classes == 15
