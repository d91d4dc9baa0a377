"""Packaging beyond pyproject.toml: the top-level conf/ (the Hydra configs, edited there) is
shipped inside the package as ``maskfm/conf``, so a wheel install finds them without the
checkout (see :data:`maskfm.config.CONFIG_DIR`). Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, find_packages, setup

# conf/ and its group directories (data/, model/, ...) as data-only packages maskfm.conf.*.
CONF = ["maskfm.conf", *(f"maskfm.conf.{name}" for name in find_namespace_packages(where="conf"))]

setup(
    packages=[*find_packages(include=["maskfm", "maskfm.*"]), *CONF],
    package_dir={"maskfm.conf": "conf"},
    package_data={name: ["*.yaml"] for name in CONF},
)
