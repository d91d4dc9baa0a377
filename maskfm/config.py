"""Where the Hydra configs live, and a readable print-out of a resolved config."""

from __future__ import annotations

from pathlib import Path

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf


def _config_dir() -> Path:
    """The checkout's top-level conf/ (source or editable install: the one to edit), else the
    copy a wheel ships inside the package (setup.py maps conf/ to maskfm/conf)."""
    package = Path(__file__).resolve().parent
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "conf" / "train.yaml").is_file():
        return checkout / "conf"
    return package / "conf"


CONFIG_DIR = _config_dir()

PRINT_ORDER = ("data", "model", "masking", "optim", "trainer", "callbacks", "logger", "paths")


def print_config_tree(cfg: DictConfig) -> None:
    """Print the resolved config as a tree, main groups first."""
    tree = rich.tree.Tree("config", guide_style="dim")
    keys = [k for k in PRINT_ORDER if k in cfg] + [k for k in cfg if k not in PRINT_ORDER]
    for key in keys:
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else str(node)
        branch = tree.add(f"[bold]{key}[/bold]")
        branch.add(
            rich.syntax.Syntax(text.rstrip(), "yaml", theme="ansi_dark", background_color="default")
        )
    rich.print(tree)
