"""data=point_folder: a user's point files and meshes, their cache, bad files, the open3d extra,
and reconstructions written as coloured .ply files."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from maskfm.callbacks.ply import write_ply
from maskfm.callbacks.reconstructions import PANEL_COLOURS
from maskfm.data.points import CorruptPointCloudError, PointCloudDataModule, PointFolder
from maskfm.data.points import files as point_files
from maskfm.data.points import folder as point_folder
from maskfm.data.points.files import MissingExtraError, read_cloud, read_off
from maskfm.errors import UserInputError
from maskfm.train import train
from tests.test_data_registry import TINY_POINTS

needs_open3d = pytest.mark.skipif(
    importlib.util.find_spec("open3d") is None, reason="open3d (the open3d extra) is not installed"
)

# ----------------------------------------------------------------------------- writers

CUBE = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
QUADS = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
TRIANGLES = [t for a, b, c, d in QUADS for t in ((a, b, c), (a, c, d))]


def write_off(path: Path, v: np.ndarray, glued: bool = False) -> Path:
    """Quads (a fan of two triangles each once read); ``glued``: "OFF8 6 0" as in ModelNet40."""
    head = f"OFF{len(v)} 6 0\n" if glued else f"OFF\n# a comment\n{len(v)} 6 0\n"
    rows = "".join(f"{a} {b} {c}\n" for a, b, c in v)
    path.write_text(head + rows + "".join("4 " + " ".join(map(str, q)) + "\n" for q in QUADS))
    return path


def write_obj(path: Path, v: np.ndarray) -> Path:
    rows = "".join(f"v {a} {b} {c}\n" for a, b, c in v)
    path.write_text(rows + "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in TRIANGLES))
    return path


def write_stl(path: Path, v: np.ndarray) -> Path:
    facets = "".join(
        "facet normal 0 0 0\nouter loop\n"
        + "".join(f"vertex {x} {y} {z}\n" for x, y, z in v[list(t)])
        + "endloop\nendfacet\n"
        for t in TRIANGLES
    )
    path.write_text(f"solid cube\n{facets}endsolid cube\n")
    return path


def write_ply_mesh(path: Path, v: np.ndarray) -> Path:
    head = (
        f"ply\nformat ascii 1.0\nelement vertex {len(v)}\nproperty float x\nproperty float y\n"
        f"property float z\nelement face {len(TRIANGLES)}\n"
        "property list uchar int vertex_indices\nend_header\n"
    )
    rows = "".join(f"{a} {b} {c}\n" for a, b, c in v)
    path.write_text(head + rows + "".join(f"3 {a} {b} {c}\n" for a, b, c in TRIANGLES))
    return path


def write_pcd(path: Path, p: np.ndarray) -> Path:
    head = (
        "# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
        f"WIDTH {len(p)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(p)}\nDATA ascii\n"
    )
    path.write_text(head + "".join(f"{a} {b} {c}\n" for a, b, c in p))
    return path


def write_xyz(path: Path, p: np.ndarray) -> Path:
    np.savetxt(path, np.concatenate([p, np.ones((len(p), 3))], axis=1))  # xyz + 3 more columns
    return path


def write_pts(path: Path, p: np.ndarray) -> Path:
    """A leading point count and comma-separated columns (scanner exports)."""
    path.write_text(f"{len(p)}\n" + "".join(f"{a},{b},{c}\n" for a, b, c in p))
    return path


def blob(seed: int, n: int = 300) -> np.ndarray:
    """n points off-centre (float32 values, so text round trips are exact enough)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 3)) * [1.0, 2.0, 0.5] + [3.0, -1.0, 2.0]).astype(np.float32)


POINT_WRITERS = {
    ".xyz": write_xyz,
    ".pts": write_pts,
    ".npy": lambda path, p: np.save(path, p) or path,
    ".ply": lambda path, p: write_ply(path, p, (1, 2, 3)),
    ".pcd": write_pcd,
}
MESH_WRITERS = {".off": write_off, ".obj": write_obj, ".stl": write_stl, ".ply": write_ply_mesh}
NUMPY_ONLY = (".xyz", ".pts", ".npy")


def make_folder(root: Path, per_class: dict[str, int], suffixes=NUMPY_ONLY) -> Path:
    """``root/<class>/<i><suffix>``: blobs of points, cycling through ``suffixes``."""
    for c, (name, n) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            suffix = suffixes[i % len(suffixes)]
            POINT_WRITERS[suffix](root / name / f"{i}{suffix}", blob(100 * c + i))
    return root


def on_cube_surface(p: np.ndarray, scale: float = 1.0) -> bool:
    q = p / scale
    inside = ((q > -1e-5) & (q < 1 + 1e-5)).all()
    on_face = (np.minimum(np.abs(q), np.abs(q - 1)) < 1e-5).any(axis=1).all()
    return bool(inside and on_face)


# ----------------------------------------------------------------------------- readers


@pytest.mark.parametrize("suffix", NUMPY_ONLY)
def test_numpy_point_formats_read_the_stored_points_without_open3d(tmp_path, monkeypatch, suffix):
    def no_open3d():
        raise ImportError("No module named 'open3d'")

    monkeypatch.setattr(point_files, "import_open3d", no_open3d)
    want = blob(0)
    got = read_cloud(POINT_WRITERS[suffix](tmp_path / f"a{suffix}", want), 64, "uniform", 0)
    assert got.shape[0] == 300 and np.allclose(got[:, :3], want, atol=1e-6)


@needs_open3d
@pytest.mark.parametrize("suffix", [".ply", ".pcd"])
def test_open3d_point_formats_read_the_stored_points(tmp_path, suffix):
    want = blob(1)
    got = read_cloud(POINT_WRITERS[suffix](tmp_path / f"a{suffix}", want), 64, "uniform", 0)
    assert np.allclose(got, want, atol=1e-5)


def test_off_with_the_keyword_glued_to_the_counts_and_polygons(tmp_path):
    for glued in (False, True):
        v, f = read_off(write_off(tmp_path / f"m{glued}.off", CUBE * 2, glued=glued))
        assert np.array_equal(v, CUBE * 2) and f.tolist() == [list(t) for t in TRIANGLES]
    mixed = tmp_path / "mixed.off"  # a triangle, then a pentagon with a colour after its indices
    mixed.write_text("OFF\n5 2 0\n" + "0 0 0\n" * 5 + "3 4 3 2\n5 0 1 2 3 4 255 0 0\n")
    assert read_off(mixed)[1].tolist() == [[4, 3, 2], [0, 1, 2], [0, 2, 3], [0, 3, 4]]
    mixed.write_text("OFF\n3 2 0\n" + "0 0 0\n" * 3 + "3 0 1\n3 0 1 2\n")
    with pytest.raises(CorruptPointCloudError, match="mixed.off': .*face 0 lists fewer than its 3"):
        read_off(mixed)


@needs_open3d
@pytest.mark.parametrize("suffix", list(MESH_WRITERS))
def test_meshes_are_sampled_on_their_surface_seeded(tmp_path, suffix):
    path = MESH_WRITERS[suffix](tmp_path / f"cube{suffix}", CUBE * 3)
    a = read_cloud(path, 200, "uniform", seed=0)
    assert a.shape == (200, 3) and a.dtype == np.float32 and on_cube_surface(a, 3)
    assert np.array_equal(a, read_cloud(path, 200, "uniform", seed=0))
    assert not np.array_equal(a, read_cloud(path, 200, "uniform", seed=1))
    # the six faces have equal areas: about a sixth of the points on each (z = 0 face here)
    assert 15 <= int((np.abs(a[:, 2]) < 1e-5).sum()) <= 55


@needs_open3d
def test_poisson_disk_spreads_points_more_evenly_than_uniform(tmp_path):
    path = write_off(tmp_path / "cube.off", CUBE)

    def closest_pair(p: np.ndarray) -> float:
        d = np.linalg.norm(p[:, None] - p[None], axis=-1) + np.eye(len(p)) * 9
        return float(d.min())

    uniform, poisson = (read_cloud(path, 150, m, seed=0) for m in ("uniform", "poisson"))
    assert poisson.shape == (150, 3) and on_cube_surface(poisson)
    assert np.array_equal(poisson, read_cloud(path, 150, "poisson", seed=0))
    # 150 Poisson-disk points on area 6 are ~0.2 apart; uniform ones come much closer
    assert closest_pair(poisson) > 0.1 > 2 * closest_pair(uniform)


# ----------------------------------------------------------------------------- layout, split


def test_classes_from_folders_and_a_seeded_split_per_class(tmp_path):
    root = make_folder(tmp_path / "d", {"b_few": 5, "a_many": 10, "c_one": 1})
    train, test = (PointFolder(root, s, 64, test_fraction=0.2, seed=3) for s in ("train", "test"))
    assert train.classes == test.classes == ["a_many", "b_few", "c_one"]
    by_class = lambda ds: [sum(lab == k for lab in ds.labels) for k in range(3)]  # noqa: E731
    # round(10 * 0.2) = 2, round(5 * 0.2) = 1, a class of one file keeps it for training
    assert by_class(test) == [2, 1, 0] and by_class(train) == [8, 4, 1]
    names = {f.rel for f in train.files}, {f.rel for f in test.files}
    assert not names[0] & names[1] and len(names[0] | names[1]) == 16
    again = PointFolder(root, "test", 64, test_fraction=0.2, seed=3)
    assert [f.rel for f in again.files] == [f.rel for f in test.files]
    other = PointFolder(root, "test", 64, test_fraction=0.2, seed=4)
    assert [f.rel for f in other.files] != [f.rel for f in test.files]
    sample = train[0]
    assert sample["points"].shape == (64, 3) and sample["label"] == 0 and sample["skipped"] == 0
    assert sample["points"].norm(dim=1).max().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(sample["points"].mean(0), torch.zeros(3), atol=1e-5)


@pytest.mark.parametrize("layout", ["root/train/<class>", "root/<class>/train"])
def test_train_and_test_folders_are_the_split(tmp_path, layout):
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("bowl", "cup"):
            folder = (
                tmp_path / split / cls if layout == "root/train/<class>" else tmp_path / cls / split
            )
            folder.mkdir(parents=True)
            for i in range(n):
                np.save(folder / f"{i}.npy", blob(i))
    train, test = PointFolder(tmp_path, "train", 64), PointFolder(tmp_path, "test", 64)
    assert train.classes == ["bowl", "cup"] and train.labels == [0, 0, 0, 1, 1, 1]
    assert test.labels == [0, 0, 1, 1] and all("test" in f.path.parts for f in test.files)


def test_an_unlabelled_folder_pretrains_but_has_no_eval_loaders(tmp_path):
    for i in range(6):
        np.save(tmp_path / f"scan{i}.npy", blob(i))
    dm = PointCloudDataModule("point_folder", root=str(tmp_path), num_points=64, batch_size=2)
    assert dm.class_names == [] and dm.num_classes == 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["points"].shape == (2, 64, 3) and batch["label"].tolist() == [-1, -1]
    assert len(dm.val_set) == 1  # round(6 * 0.2)
    with pytest.raises(UserInputError, match="no classes .*unlabelled point folder"):
        dm.eval_dataloaders()


def test_mixed_layouts_and_empty_folders_are_named(tmp_path):
    (tmp_path / "chair").mkdir()
    np.save(tmp_path / "chair" / "a.npy", blob(0))
    np.save(tmp_path / "loose.npy", blob(1))
    with pytest.raises(CorruptPointCloudError, match="mixes layouts: .*chair/a.npy' is in a class"):
        PointFolder(tmp_path, "train", 64)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a cloud")
    with pytest.raises(CorruptPointCloudError, match=r"no point or mesh files \(.*\) under"):
        PointFolder(tmp_path / "empty", "train", 64)


# ----------------------------------------------------------------------------- cache


@needs_open3d
def test_meshes_are_cached_reused_and_read_again_when_they_change(tmp_path, monkeypatch):
    root = tmp_path / "d"
    (root / "box").mkdir(parents=True)
    write_off(root / "box" / "a.off", CUBE, glued=True)
    write_off(root / "box" / "b.off", CUBE * 2)
    write_off(root / "box" / "c.off", CUBE * 3)
    np.save(root / "box" / "d.npy", blob(0))
    calls: list[str] = []
    real = point_folder.read_cloud
    monkeypatch.setattr(
        point_folder, "read_cloud", lambda p, *a: calls.append(p.name) or real(p, *a)
    )
    build = lambda **kw: PointFolder(root, "train", 64, mesh_points=128, **kw)  # noqa: E731
    first = build()  # 3 of the 4 files (round(4 * 0.2) = 1 is held out)
    meshes = [f.path.name for f in first.files if f.path.suffix == ".off"]
    assert calls == meshes and len(list((root / ".maskfm_cache").glob("*.npy"))) == len(meshes)
    calls.clear()
    again = build()
    assert calls == [] and again.sources == first.sources  # the cache entries, read by numpy

    changed = root / "box" / meshes[0]
    write_off(changed, CUBE * 5, glued=True)
    os.utime(changed, ns=(1, 1))
    fresh = build()
    assert calls == [changed.name] and fresh.sources[1:] == first.sources[1:]
    assert isinstance(fresh.sources[0], Path) and on_cube_surface(np.load(fresh.sources[0]), 5)
    calls.clear()
    build(mesh_sampling="poisson")  # other settings: other entries
    assert calls == meshes


def test_a_cached_folder_needs_no_open3d_and_a_missing_extra_is_named(tmp_path, monkeypatch):
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    for i in range(3):
        np.save(root / "a" / f"{i}.npy", blob(i))
    write_obj(root / "a" / "m.obj", CUBE)

    def no_open3d():
        raise ImportError("libusb-1.0.so.0: cannot open shared object file")

    if importlib.util.find_spec("open3d") is not None:  # build the cache while open3d is here
        PointFolder(root, "train", 64, test_fraction=0.3, mesh_points=128)
        PointFolder(root, "test", 64, test_fraction=0.3, mesh_points=128)
        monkeypatch.setattr(point_files, "import_open3d", no_open3d)
        served = PointFolder(root, "train", 64, test_fraction=0.3, mesh_points=128)
        served_test = PointFolder(root, "test", 64, test_fraction=0.3, mesh_points=128)
        assert len(served) + len(served_test) == 4
    monkeypatch.setattr(point_files, "import_open3d", no_open3d)
    for split in ("train", "test"):  # a fresh cache folder: the .obj must be read
        try:
            PointFolder(root, split, 64, test_fraction=0.3, cache_dir=tmp_path / f"c{split}")
        except MissingExtraError as e:
            message = str(e)
            break
    else:
        raise AssertionError("reading the .obj without open3d did not fail")
    assert f"reading '{root / 'a' / 'm.obj'}' needs open3d" in message
    assert "pip install 'maskfm[open3d]'" in message and "libusb-1.0.so.0" in message
    assert "`make install` installs it" in message and "apt-get install libusb-1.0-0" in message


# ----------------------------------------------------------------------------- bad files


def _bad_files(folder: Path) -> dict[str, str]:
    """File name -> what the error says, for files that numpy reads (no open3d needed)."""
    (folder / "1_empty.xyz").write_text("")
    nan = blob(1)
    nan[5, 1] = np.nan
    np.save(folder / "2_nan.npy", nan)
    np.save(folder / "3_flat.npy", blob(2)[:, :2])
    (folder / "4_words.pts").write_text("1 2 3\nfour five six\n")
    np.save(folder / "5_few.npy", blob(3, n=10))
    return {
        "1_empty.xyz": "no points",
        "2_nan.npy": "1 points with NaN/inf coordinates",
        "3_flat.npy": r"shape \(N, 3\)",
        "4_words.pts": "not a table of numbers",
        "5_few.npy": "has 10 points, fewer than the 64 required",
    }


def test_bad_files_are_named_or_skipped_and_counted(tmp_path):
    root = tmp_path / "main"
    folder = root / "train" / "things"
    folder.mkdir(parents=True)
    for i in (0, 6, 7):
        np.save(folder / f"{i}_good.npy", blob(i))
    bad = _bad_files(folder)
    (root / "test" / "things").mkdir(parents=True)
    np.save(root / "test" / "things" / "t.npy", blob(9))

    for name, says in bad.items():  # each alone, as the only bad file of the folder
        only = tmp_path / f"only_{name}" / "train" / "things"
        only.mkdir(parents=True)
        (only / name).write_bytes((folder / name).read_bytes())
        np.save(only / "0_good.npy", blob(0))
        with pytest.raises(CorruptPointCloudError, match=f"{name}'.*{says}"):
            ds = PointFolder(only.parents[1], "train", 64)  # text files are read here
            [ds[j] for j in range(len(ds))]  # .npy files here

    ds = PointFolder(root, "train", 64, skip_corrupt=True)
    names = [f.path.name for f in ds.files]
    assert names == sorted(["0_good.npy", "6_good.npy", "7_good.npy", *bad])
    got = [ds[j] for j in range(len(ds))]
    # every bad file is passed over to the next good one (0..5 wrap to 6) and counted
    assert [g["skipped"] for g in got] == [0, 5, 4, 3, 2, 1, 0, 0]
    assert ds._bad == {1, 2, 3, 4, 5}


BAD_MESHES = {  # file name -> (content, what the error says)
    "1_garbage.ply": (
        "ply\nformat ascii 1.0\nelement face 3\nend_header\nx\n",
        "open3d read no points",
    ),
    "2_flat.off": ("OFF\n3 1 0\n0 0 0\n1 0 0\n2 0 0\n3 0 1 2\n", "no surface"),
    "3_index.off": ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n", "a vertex outside 0..2"),
    "4_noply.ply": ("not a ply file\n", "not a PLY file"),
}


def _mesh_folder(root: Path, bad: list[str]) -> Path:
    for split in ("train", "test"):
        (root / split / "m").mkdir(parents=True)
        write_off(root / split / "m" / "0_ok.off", CUBE)
    for name in bad:
        (root / "train" / "m" / name).write_text(BAD_MESHES[name][0])
    return root


@needs_open3d
def test_bad_meshes_are_named_or_skipped(tmp_path):
    for name, (_, says) in BAD_MESHES.items():  # sampled when the dataset is built: raises then
        root = _mesh_folder(tmp_path / name, [name])
        with pytest.raises(CorruptPointCloudError, match=f"{name}'.*{says}"):
            PointFolder(root, "train", 64, mesh_points=128)
    ds = PointFolder(
        _mesh_folder(tmp_path / "all", list(BAD_MESHES)),
        "train",
        64,
        skip_corrupt=True,
        mesh_points=128,
    )
    assert ds._bad == {1, 2, 3, 4} and [ds[j]["skipped"] for j in range(5)] == [0, 4, 3, 2, 1]
    assert all(BAD_MESHES[ds.files[j].path.name][1] in ds.problems[j] for j in range(1, 5))


# ----------------------------------------------------------------------------- .ply output


def read_binary_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Points and colours of a file from :func:`write_ply`, parsed here with numpy."""
    raw = path.read_bytes()
    head, body = raw.split(b"end_header\n", 1)
    assert b"format binary_little_endian 1.0" in head
    n = int(head.split(b"element vertex ")[1].split()[0])
    table = np.frombuffer(
        body, dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)], count=n
    )  # 15 bytes per vertex, packed
    assert len(body) == 15 * n
    return table["xyz"], table["rgb"]


def test_write_ply_reads_back_with_points_and_colours(tmp_path):
    pts = blob(4, n=37)
    path = write_ply(tmp_path / "c.ply", pts, (230, 120, 30))
    xyz, rgb = read_binary_ply(path)
    assert np.array_equal(xyz, pts) and (rgb == [230, 120, 30]).all()
    if importlib.util.find_spec("open3d") is not None:
        import open3d as o3d

        cloud = o3d.io.read_point_cloud(str(path))
        assert np.allclose(np.asarray(cloud.points), pts)
        assert np.allclose(np.asarray(cloud.colors), np.array([230, 120, 30]) / 255)


# ----------------------------------------------------------------------------- training


def test_point_mae_trains_on_a_point_folder_and_writes_ply_reconstructions(tmp_path, compose_train):
    root = make_folder(tmp_path / "scans", {"rock": 6, "stick": 6})
    cfg = compose_train([
        *TINY_POINTS, "data=point_folder", f"data.root={root}", "data.num_points=256",
        "data.num_workers=0", "trainer.max_steps=2", "logger=none", "data.batch_size=4",
    ])  # fmt: skip
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 2 and np.isfinite(metrics["train/loss"])
    dm = objects["datamodule"]
    assert dm.class_names == ["rock", "stick"] and len(dm.val_set) == 2  # 1 per class
    out = tmp_path / "run" / "reconstructions"
    assert (out / "step_000002.png").is_file()
    plys = sorted(p.name for p in (out / "step_000002").glob("*.ply"))
    panels = ("input", "visible", "reconstruction")
    assert plys == sorted(f"{i}_{p}.ply" for i in range(2) for p in panels)  # 2 val examples
    xyz, rgb = read_binary_ply(out / "step_000002" / "0_input.ply")
    assert xyz.shape == (256, 3) and (rgb == PANEL_COLOURS[0]).all()
    visible, colour = read_binary_ply(out / "step_000002" / "0_visible.ply")
    # 16 patches of 16 points, 60 % hidden: round(0.6 * 16) = 10 hidden, 6 x 16 visible
    assert visible.shape == (96, 3) and (colour == PANEL_COLOURS[1]).all()
    recon, colour = read_binary_ply(out / "step_000002" / "0_reconstruction.ply")
    assert recon.shape == (256, 3) and (colour == PANEL_COLOURS[2]).all()


def test_lidar_reconstructions_are_written_as_ply_too(tmp_path, compose_train):
    """R-MAE's panels are voxel centres of the first sweep, one cloud each of its own size."""
    cfg = compose_train([
        "+experiment=rmae", "data.point_cloud_range=[0.0,-6.4,-3.0,12.8,6.4,1.0]",
        "data.voxel_size=[0.8,0.8,0.1]", "data.batch_size=2", "data.num_train=2",
        "data.num_val=2", "trainer.max_steps=1", "logger=none",
    ])  # fmt: skip
    train(cfg)
    out = tmp_path / "run" / "reconstructions" / "step_000001"
    assert sorted(p.name for p in out.glob("*.ply")) == [
        "0_input.ply",
        "0_reconstruction.ply",
        "0_visible.ply",
    ]
    (inp, grey), (vis, blue) = (read_binary_ply(out / f"0_{p}.ply") for p in ("input", "visible"))
    assert 0 < len(vis) < len(inp) and (grey == PANEL_COLOURS[0]).all()
    assert (blue == PANEL_COLOURS[1]).all()
    assert {tuple(p) for p in vis.round(3)} <= {tuple(p) for p in inp.round(3)}
