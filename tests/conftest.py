"""Shared fixtures: compose the real Hydra configs, shrunk to run in seconds on CPU."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from maskfm.config import CONFIG_DIR
from maskfm.run_dir import register_resolvers


@pytest.fixture
def compose_train(tmp_path):
    """``compose_train(overrides) -> DictConfig`` with outputs under ``tmp_path``."""
    register_resolvers()

    def _compose(overrides: list[str], config_name: str = "train"):
        paths = [
            f"paths.log_dir={tmp_path}/runs",
            f"paths.output_dir={tmp_path}/run",
            f"paths.data_dir={tmp_path}/data",
        ]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name, overrides=[*overrides, *paths, "print_config=false"])

    return _compose
