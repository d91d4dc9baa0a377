"""Reading a user's point-cloud and mesh files (``data=point_folder``).

``.npy``, ``.xyz`` and ``.pts`` are read with numpy. ``.ply``, ``.pcd``, ``.obj`` and ``.stl``
are read, and every mesh is sampled to points, with open3d, an optional extra (``pip install
'maskfm[open3d]'``): :func:`require_open3d` says so, naming the extra, when it is missing.
``.off`` is parsed here (ModelNet40's raw files glue the counts to the keyword, ``OFF490 972 0``,
which open3d refuses) and sampled with open3d. A ``.ply`` is a mesh if its header declares
faces, else a point cloud. Every problem with a file raises
:class:`~maskfm.data.points.common.CorruptPointCloudError` naming it.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from types import ModuleType

import numpy as np

from maskfm.data.points.common import CorruptPointCloudError
from maskfm.errors import UserInputError

POINT_SUFFIXES = (".ply", ".pcd", ".xyz", ".pts", ".npy")
MESH_SUFFIXES = (".off", ".obj", ".ply", ".stl")
NUMPY_SUFFIXES = (".npy", ".xyz", ".pts")  # readable without open3d
MESH_SAMPLINGS = ("uniform", "poisson")

OPEN3D_EXTRA = (
    "pip install 'maskfm[open3d]' (in a checkout `make install` installs it, its EXTRAS include "
    "open3d; on Debian/Ubuntu open3d also needs `apt-get install libusb-1.0-0`)"
)


class MissingExtraError(UserInputError):
    """A feature needs an optional dependency that is not installed; the message says which."""


def import_open3d() -> ModuleType:
    """``import open3d`` (the one place maskfm imports it; tests replace this to simulate
    a machine without the extra)."""
    return importlib.import_module("open3d")


def require_open3d(purpose: str) -> ModuleType:
    """open3d, or :class:`MissingExtraError` saying that ``purpose`` needs the extra."""
    try:
        return import_open3d()
    except (ImportError, OSError) as e:  # OSError: a shared library (libusb) is missing
        raise MissingExtraError(
            f"{purpose} needs open3d, an optional extra that is not usable here "
            f"({type(e).__name__}: {e}): {OPEN3D_EXTRA}"
        ) from e


@contextlib.contextmanager
def _quiet(o3d: ModuleType):
    """Silence open3d's own warnings: failures are reported by our errors instead."""
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        yield


def _corrupt(path: Path, problem: str) -> CorruptPointCloudError:
    return CorruptPointCloudError(f"'{path}': {problem}")


# ---- numpy formats ----------------------------------------------------------------


def read_npy(path: Path) -> np.ndarray:
    """The array of an ``.npy`` file (never unpickled)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise _corrupt(path, f"cannot read the .npy file: {type(e).__name__}: {e}") from e


def read_text_points(path: Path) -> np.ndarray:
    """``.xyz`` / ``.pts``: one point per line, columns split by spaces or commas, xyz first.

    Blank lines and ``#`` comments are ignored, and so is a first line holding one number
    (the point count some scanners write at the top of ``.pts`` files).
    """
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise _corrupt(path, f"not a text file ({e.reason} at byte {e.start})") from e
    rows = [
        (i, line.replace(",", " ").split())
        for i, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if len(rows) > 1 and len(rows[0][1]) == 1:
        rows = rows[1:]
    if not rows:
        raise _corrupt(path, "no points (the file is empty)")
    width = len(rows[0][1])
    for line, words in rows:
        if len(words) != width:
            raise _corrupt(path, f"line {line} has {len(words)} columns, line {rows[0][0]} {width}")
    try:
        return np.array([words for _, words in rows], dtype=np.float64)
    except ValueError as e:
        raise _corrupt(path, f"not a table of numbers ({e})") from e


# ---- meshes and the open3d formats -------------------------------------------------


def ply_face_count(path: Path) -> int:
    """Number of faces a PLY header declares (0 for a point cloud)."""
    faces = 0
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise _corrupt(path, "not a PLY file (the first line is not 'ply')")
        for line in iter(f.readline, b""):
            words = line.split()
            if words[:1] == [b"end_header"]:
                return faces
            if words[:2] == [b"element", b"face"] and len(words) > 2:
                try:
                    faces = int(words[2])
                except ValueError:
                    raise _corrupt(path, f"bad PLY header line {line.strip()!r}") from None
    raise _corrupt(path, "the PLY header has no 'end_header' line")


def read_off(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices float64 (V, 3) and triangles int64 (F, 3) of an ASCII ``.off`` file.

    Accepts the keyword glued to the counts (``OFF490 972 0``, as in raw ModelNet40) and
    polygons (split into a fan of triangles); ``#`` comments are ignored.
    """
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise _corrupt(path, f"not a text OFF file ({e.reason} at byte {e.start})") from e
    lines = [s.split() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]
    if not lines or not lines[0][0].startswith("OFF"):
        raise _corrupt(path, "not an OFF file (it does not start with 'OFF')")
    counts = ([lines[0][0][3:]] if lines[0][0] != "OFF" else []) + lines[0][1:]
    body = lines[1:]
    if not counts:
        counts, body = (body[0], body[1:]) if body else ([], [])
    try:
        nv, nf = int(counts[0]), int(counts[1])
        if len(body) < nv + nf:
            raise ValueError(f"it declares {nv} vertices and {nf} faces but has {len(body)} lines")
        vertices = np.array([v[:3] for v in body[:nv]], dtype=np.float64).reshape(nv, 3)
        faces = _fan_triangles(body[nv : nv + nf])
    except (ValueError, IndexError) as e:
        raise _corrupt(path, f"malformed OFF file: {e}") from e
    if faces.size and (faces.min() < 0 or faces.max() >= nv):
        raise _corrupt(path, f"a face refers to a vertex outside 0..{nv - 1}")
    return vertices, faces


def _fan_triangles(rows: list[list[str]]) -> np.ndarray:
    """OFF face rows ``n i1 .. in [colour]`` -> int64 (F, 3) triangles ``(i1, ik, ik+1)``."""
    sizes = {int(words[0]) for words in rows}
    if len(sizes) == 1:  # one polygon kind (ModelNet40: triangles): numpy
        n = sizes.pop()
        if n < 3:  # points or edges only: no surface
            return np.zeros((0, 3), dtype=np.int64)
        short = next((i for i, words in enumerate(rows) if len(words) <= n), None)
        if short is not None:
            raise ValueError(f"face {short} lists fewer than its {n} vertex indices")
        table = np.array([words[1 : n + 1] for words in rows], dtype=np.int64)
        return np.stack(
            [np.stack([table[:, 0], table[:, k], table[:, k + 1]], 1) for k in range(1, n - 1)], 1
        ).reshape(-1, 3)
    triangles = [
        (f[1], f[k], f[k + 1])
        for f in (list(map(int, words)) for words in rows)
        for k in range(2, f[0])
    ]
    return np.array(triangles, dtype=np.int64).reshape(-1, 3)


def read_with_open3d(path: Path, mesh: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(vertices or points float64 (N, 3), triangles (F, 3) if ``mesh`` else None) via open3d."""
    o3d = require_open3d(f"reading '{path}'")
    with _quiet(o3d):
        if mesh:
            geometry = o3d.io.read_triangle_mesh(str(path))
            points, faces = np.asarray(geometry.vertices), np.asarray(geometry.triangles)
        else:
            points, faces = np.asarray(o3d.io.read_point_cloud(str(path)).points), None
    if len(points) == 0:
        raise _corrupt(path, "open3d read no points from it (unreadable or empty)")
    if mesh and (faces is None or len(faces) == 0):
        raise _corrupt(path, "a mesh without faces (save a point cloud as .ply/.pcd/.xyz)")
    return points, faces


def sample_mesh(
    path: Path, vertices: np.ndarray, triangles: np.ndarray, n: int, method: str, seed: int
) -> np.ndarray:
    """``n`` points float32 (n, 3) on the mesh's surface by open3d, its RNG seeded with ``seed``:
    ``uniform`` (area-weighted) or ``poisson`` (Poisson-disk: evenly spread, slower)."""
    if method not in MESH_SAMPLINGS:
        raise ValueError(f"mesh_sampling must be one of {MESH_SAMPLINGS}, got {method!r}")
    if not np.isfinite(vertices).all():
        raise _corrupt(path, "the mesh has NaN/inf vertex coordinates")
    o3d = require_open3d(f"sampling points on the mesh '{path}'")
    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.ascontiguousarray(vertices, dtype=np.float64)),
        o3d.utility.Vector3iVector(np.ascontiguousarray(triangles, dtype=np.int32)),
    )
    if not mesh.get_surface_area() > 0:
        raise _corrupt(path, "the mesh has no surface (zero area)")
    with _quiet(o3d):
        o3d.utility.random.seed(seed)
        cloud = (
            mesh.sample_points_uniformly(number_of_points=n)
            if method == "uniform"
            else mesh.sample_points_poisson_disk(number_of_points=n)
        )
    return np.asarray(cloud.points, dtype=np.float32)


def is_mesh(path: Path) -> bool:
    """Whether ``path`` is sampled as a mesh: .off/.obj/.stl, or a .ply whose header has faces."""
    suffix = path.suffix.lower()
    if suffix == ".ply":
        return ply_face_count(path) > 0
    return suffix in MESH_SUFFIXES


def read_cloud(path: Path, mesh_points: int, mesh_sampling: str, seed: int) -> np.ndarray:
    """The points of any supported file: a point file's stored points (N, C>=3), or
    ``mesh_points`` points sampled on a mesh (float32 (mesh_points, 3))."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return read_npy(path)
    if suffix in (".xyz", ".pts"):
        return read_text_points(path)
    if not is_mesh(path):
        return read_with_open3d(path, mesh=False)[0]
    if suffix == ".off":
        vertices, faces = read_off(path)
    else:
        vertices, faces = read_with_open3d(path, mesh=True)
        assert faces is not None
    if len(faces) == 0:
        raise _corrupt(path, "the mesh has no faces")
    return sample_mesh(path, vertices, faces, mesh_points, mesh_sampling, seed)
