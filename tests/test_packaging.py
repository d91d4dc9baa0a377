"""A plain (non-editable) install works away from the checkout: the wheel carries the package
and the Hydra configs of the top-level conf/ (as ``maskfm/conf``), and ``python -m
maskfm.train`` composes and trains from any directory with nothing but the installed wheel.

The fresh environment is a venv of the base interpreter whose one ``.pth`` line puts this
environment's site-packages on ``sys.path`` (the dependencies, nothing downloaded). A path line
does not run the ``.pth`` files of that directory, so the editable install of maskfm (an import
hook started by ``__editable__.maskfm-*.pth``) stays inactive; the test checks that the imported
package and its configs are the wheel's.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.helpers import TINY_MAE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "maskfm", "conf")


def run(args: list, cwd: Path, timeout: int = 300, env: dict | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the sources (the build writes build/ and *.egg-info beside them)."""
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            src,
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "-w",
            tmp / "dist",
        ],
        cwd=tmp,
    )
    (wheel,) = (tmp / "dist").glob("maskfm-*.whl")
    return wheel


def fresh_env(root: Path) -> tuple[Path, dict]:
    """A venv that imports this environment's packages but not its maskfm; (python, environ)."""
    run(
        [getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", root],
        cwd=root.parent,
    )
    python = root / "bin" / "python"
    purelib = Path(
        run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root
        ).strip()
    )
    (purelib / "_maskfm_test_deps.pth").write_text(
        "".join(f"{p}\n" for p in site.getsitepackages())
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONNOUSERSITE="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1", PIP_NO_INDEX="1")
    return python, env


def test_wheel_install_trains_outside_the_checkout(tmp_path):
    start = time.perf_counter()
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.removeprefix("maskfm/conf/") for n in names if n.startswith("maskfm/conf/"))
    assert shipped == sorted(
        str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")
    )
    packaged = {n for n in names if n.endswith(".py")}
    assert packaged == {str(p.relative_to(REPO)) for p in (REPO / "maskfm").rglob("*.py")}

    python, env = fresh_env(tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "--disable-pip-version-check",
            wheel,
        ],
        cwd=elsewhere,
        env=env,
    )
    where = run(
        [
            python,
            "-c",
            "import maskfm, maskfm.config as c; print(maskfm.__file__); print(c.CONFIG_DIR)",
        ],
        cwd=elsewhere,
        env=env,
    ).split()
    installed = tmp_path / "venv" / "lib"
    assert all(Path(p).is_relative_to(installed) for p in where), where
    assert Path(where[1]).name == "conf" and (Path(where[1]) / "train.yaml").is_file()
    for entry in ("evaluate", "bench"):  # their configs compose from the packaged copy too
        run(
            [python, "-m", f"maskfm.{entry}", "+experiment=mae", "--cfg", "job"],
            cwd=elsewhere,
            env=env,
        )
    setup_s = time.perf_counter() - start
    assert setup_s < 90, f"building and installing took {setup_s:.0f} s"

    out = run(
        [
            python,
            "-m",
            "maskfm.train",
            "+experiment=mae",
            *TINY_MAE,
            "data.img_size=32",
            "data.num_train=8",
            "data.num_val=4",
            "data.batch_size=4",
            "data.num_workers=0",
            "trainer.max_steps=1",
            f"paths.log_dir={tmp_path}/runs",
        ],
        cwd=elsewhere,
        env=env,
    )
    (run_dir,) = (tmp_path / "runs" / "train" / "mae").iterdir()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file(), out[-2000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (elsewhere / "runs").exists()
