"""Pretrain a masked-modeling method.

    python -m maskfm.train +experiment=mae
    python -m maskfm.train +experiment=mae trainer=gpu data.batch_size=256
    python -m maskfm.train +experiment=mae ckpt_path=last      # continue the latest run

``train(cfg)`` is a plain function (tests call it directly); ``main`` only wraps it in Hydra.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from maskfm.callbacks import AtomicCheckpointIO
from maskfm.config import CONFIG_DIR, print_config_tree
from maskfm.methods import MaskedPretrainer
from maskfm.run_dir import latest_checkpoint, register_resolvers

log = logging.getLogger(__name__)
register_resolvers()


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every ``_target_`` entry of a dict-of-objects group (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def build_system(cfg: DictConfig) -> MaskedPretrainer:
    """Method (masker + model) wrapped in the shared pretrainer."""
    masker = instantiate(cfg.masking)
    log.info("Instantiating method <%s> with %s", cfg.model._target_, masker)
    model = instantiate(cfg.model, masker=masker)
    return MaskedPretrainer(model, mask_seed=cfg.seed or 0, **instantiate(cfg.optim, _convert_="all"))


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint to resume from: ``last`` means this run directory's newest checkpoint."""
    if cfg.ckpt_path in (None, ""):
        return None
    if cfg.ckpt_path == "last":
        last = latest_checkpoint(output_dir)
        if last is not None:
            log.info("Resuming from %s", last)
            return str(last)
        log.warning("ckpt_path=last but no previous run has a checkpoint; starting a new run")
        return None
    path = Path(cfg.ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
    return str(path)


@rank_zero_only
def save_run_config(cfg: DictConfig, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    if cfg.get("print_config", True):
        print_config_tree(cfg)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """Fit ``cfg``'s method on ``cfg``'s data; returns (final metrics, built objects)."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    if cfg.get("torch_threads"):  # e.g. 1 for spconv's CPU kernels (see maskfm/nn/sparse_compat.py)
        torch.set_num_threads(int(cfg.torch_threads))
    output_dir = Path(cfg.paths.output_dir)
    save_run_config(cfg, output_dir)

    datamodule = instantiate(cfg.data, _convert_="all")
    system = build_system(cfg)
    system.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    trainer.fit(system, datamodule=datamodule, ckpt_path=resume_checkpoint(cfg, output_dir))

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    rank_zero_only(log.info)("Run directory: %s", output_dir)
    return metrics, {"datamodule": datamodule, "system": system, "trainer": trainer}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = train(cfg)
    finally:
        finish_wandb()
    return metrics.get(cfg.get("optimized_metric") or "", None)


def finish_wandb() -> None:
    """Close a W&B run so the next job of a multirun starts its own."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


if __name__ == "__main__":
    main()
