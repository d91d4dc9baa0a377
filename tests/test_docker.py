"""The Dockerfiles cannot drift from pyproject.toml: every package they install is one the
project declares, with the same version constraints (no Docker engine runs here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted(
    p for p in (REPO / "docker").glob("Dockerfile*") if p.suffix != ".dockerignore"
)
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CUDA_SUFFIX = re.compile(
    r"^(?P<name>.+)-cu(?P<cuda>\d+)$"
)  # spconv-cu126: spconv's CUDA 12.6 build


def declared() -> dict[str, list[Requirement]]:
    """Every requirement of pyproject.toml (core and extras), by normalised name."""
    project = PYPROJECT["project"]
    lines = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    found: dict[str, list[Requirement]] = {}
    for line in lines:
        req = Requirement(line)
        found.setdefault(req.name.lower(), []).append(req)
    return found


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def pip_installs(dockerfile: Path) -> list[list[str]]:
    """The arguments of each ``pip install`` in the RUN instructions (options dropped)."""
    installs = []
    for kind, args in instructions(dockerfile):
        if kind != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = shlex.split(command)
            if words[:2] != ["pip", "install"]:
                continue
            kept, skip_next = [], False
            for word in words[2:]:
                if skip_next:
                    skip_next = False
                elif word in ("--index-url", "--extra-index-url", "-i", "-c", "-r"):
                    skip_next = True
                elif not word.startswith("-"):
                    kept.append(word)
            installs.append(kept)
    return installs


def test_there_are_a_cuda_and_a_cpu_dockerfile():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile", "Dockerfile.cpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_installed_package_matches_pyproject(dockerfile):
    known, extras = declared(), PYPROJECT["project"]["optional-dependencies"]
    base_cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)", dockerfile.read_text())
    installs = [word for words in pip_installs(dockerfile) for word in words]
    assert any(w.startswith(".") for w in installs), (
        f"{dockerfile.name} never installs maskfm itself"
    )
    for word in installs:
        if word == "pip":  # pip upgrading itself
            continue
        if word.startswith("."):  # the project: its extras must exist
            for extra in re.findall(r"\[(.*)\]", word)[0].split(",") if "[" in word else []:
                assert extra.strip() in extras, f"{dockerfile.name}: unknown extra {extra!r}"
            continue
        req = Requirement(word)
        name, cuda = req.name.lower(), None
        if (m := CUDA_SUFFIX.match(name)) and m["name"] in known:
            name, cuda = m["name"], m["cuda"]
        assert name in known, (
            f"{dockerfile.name} installs {req.name}, which pyproject.toml does not declare"
        )
        assert req.specifier in {r.specifier for r in known[name]}, (
            f"{dockerfile.name}: {word} != pyproject.toml's {[str(r) for r in known[name]]}"
        )
        if cuda is not None:  # a CUDA build must match the image's CUDA version
            assert base_cuda, f"{dockerfile.name} installs {req.name} on an image without CUDA"
            assert cuda == base_cuda[1] + base_cuda[2], (
                f"{req.name} on CUDA {base_cuda[1]}.{base_cuda[2]}"
            )


# Releases that must never be installed, under every name they were published as
# (GHSA-w37p-236h-pfx3: the compromised lightning 2.6.2 / 2.6.3 on PyPI).
EXCLUDED_RELEASES = {"lightning": ("2.6.2", "2.6.3"), "pytorch-lightning": ("2.6.2", "2.6.3")}


@pytest.mark.parametrize("name", sorted(EXCLUDED_RELEASES))
def test_every_requirement_excludes_the_compromised_releases(name):
    lines = [str(r) for r in declared().get(name, [])]
    assert lines, f"pyproject.toml declares no {name} requirement, so nothing bounds it"
    for dockerfile in DOCKERFILES:
        found = [
            w
            for words in pip_installs(dockerfile)
            for w in words
            if not w.startswith(".") and w != "pip" and Requirement(w).name.lower() == name
        ]
        assert found, f"{dockerfile.name} does not pin {name} away from {EXCLUDED_RELEASES[name]}"
        lines += found
    for line in lines:
        spec = Requirement(line).specifier
        for bad in EXCLUDED_RELEASES[name]:
            assert not spec.contains(bad) and f"!={bad}" in {str(s) for s in spec}, line


def test_no_installed_distribution_is_an_excluded_release():
    from importlib.metadata import distributions

    installed = {
        (d.metadata["Name"] or "").lower().replace("_", "-"): d.version for d in distributions()
    }
    assert "lightning" in installed and "pytorch-lightning" in installed
    bad = {n: v for n, v in installed.items() if v in EXCLUDED_RELEASES.get(n, ())}
    assert not bad, f"compromised releases installed: {bad}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_as_a_user_with_the_configs_and_a_supported_python(dockerfile):
    steps = instructions(dockerfile)
    kinds = [k for k, _ in steps]
    user = [a for k, a in steps if k == "USER"]
    assert user and user[-1].strip() not in ("root", "0"), f"{dockerfile.name} runs as root"
    first_pip = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "pip install" in a)
    assert kinds.index("USER") < first_pip  # packages are installed as the user, not root
    copied = {
        src for k, a in steps if k == "COPY" for src in a.split()[:-1] if not src.startswith("--")
    }
    assert {"maskfm", "conf", "pyproject.toml", "setup.py"} <= copied
    image = next(a for k, a in steps if k == "FROM")
    python = re.search(r"python:(\d+\.\d+)", image) or re.search(r"ubuntu(22\.04|24\.04)", image)
    version = {"22.04": "3.10", "24.04": "3.12"}.get(python[1], python[1])  # Ubuntu's python3
    assert Version(version) in SpecifierSet(PYPROJECT["project"]["requires-python"]), image
