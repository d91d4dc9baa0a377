"""Pretrain a masked-modeling method.

    python -m maskfm.train +experiment=mae
    python -m maskfm.train +experiment=mae trainer=gpu data.batch_size=256
    python -m maskfm.train +experiment=mae ckpt_path=last      # continue the latest run

``train(cfg)`` is a plain function (tests call it directly); ``main`` only wraps it in Hydra.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from maskfm.callbacks import AtomicCheckpointIO
from maskfm.config import CONFIG_DIR, print_config_tree
from maskfm.errors import exit_on_user_error
from maskfm.interop.checkpoint_file import (
    CheckpointFileError,
    is_maskfm_checkpoint,
    read_checkpoint,
)
from maskfm.methods.build import build_system
from maskfm.run_dir import latest_checkpoint, register_resolvers
from maskfm.slurm import (
    cluster_plugins,
    requeue_callback,
    restart_count,
    slurm_job_id,
    translate_sbatch_refusals,
)
from maskfm.stored_config import apply_stored_model_config

log = logging.getLogger(__name__)
register_resolvers()
translate_sbatch_refusals()  # launcher=slurm: sbatch's refusal in one line


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every ``_target_`` entry of a dict-of-objects group (callbacks, loggers)."""
    if not group:
        return []
    return [
        instantiate(node)
        for node in group.values()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint to resume from: ``last`` means this run directory's newest checkpoint.

    A SLURM job that was requeued (time limit, preemption, node failure) resumes from the newest
    checkpoint of its own run directory, whatever ``ckpt_path`` says: it reruns the command it
    was submitted with, and has progressed since.
    """
    if restart_count() > 0 and (own := latest_checkpoint(output_dir)) is not None:
        log.info(
            "SLURM job %s was requeued (restart %d): resuming from %s",
            slurm_job_id(),
            restart_count(),
            own,
        )
        return str(own)
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


def check_resume_checkpoint(cfg: DictConfig, path: str) -> None:
    """Read the checkpoint to resume from as data before Lightning does: a file that is not a
    maskfm checkpoint, or whose stored config names code, is refused with one line; a
    checkpoint of another method is named; its stored sizes fill in ``cfg.model``
    (``stored_config``)."""
    checkpoint = read_checkpoint(path, expected="a maskfm training checkpoint (.ckpt)")
    if not is_maskfm_checkpoint(checkpoint) or "optimizer_states" not in checkpoint:
        raise CheckpointFileError(
            f"{path}: not a maskfm training checkpoint (no 'state_dict' and optimiser state) "
            "to resume from; to start from pretrained weights use the method's pretrained option"
        )
    apply_stored_model_config(cfg, checkpoint, path)


def log_file_on_rank_zero_only() -> None:
    """Ranks > 0 of a data-parallel run (re-run by Lightning's DDP launcher, or started by
    srun) share rank 0's run directory: they keep logging to the console but not to its log
    file, so ``train.log`` holds each line once."""
    if rank_zero_only.rank == 0:
        return
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


# Keys of the ``trainer`` group that configure maskfm, not ``lightning.Trainer``.
MASKFM_TRAINER_KEYS = ("skip_nonfinite",)


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> L.Trainer:
    """``lightning.Trainer`` from the ``trainer`` group, without maskfm's own keys.

    Plugins the group lists (``trainer=ddp_cpu``: BatchNorm synced over gloo) are kept
    beside the atomic checkpoint writer.
    """
    options = cast(dict, OmegaConf.to_container(cfg.trainer, resolve=True))
    for key in MASKFM_TRAINER_KEYS:
        options.pop(key, None)
    plugins = [instantiate(p) for p in options.pop("plugins", None) or []]
    return instantiate(
        options,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[*plugins, AtomicCheckpointIO(), *cluster_plugins(plugins)],
    )


@rank_zero_only
def save_run_config(cfg: DictConfig, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    if cfg.get("print_config", True):
        print_config_tree(cfg)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """Fit ``cfg``'s method on ``cfg``'s data; returns (final metrics, built objects)."""
    log_file_on_rank_zero_only()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    if cfg.get("torch_threads"):  # e.g. 1 for spconv's CPU kernels (see maskfm/nn/sparse_compat.py)
        torch.set_num_threads(int(cfg.torch_threads))
    output_dir = Path(cfg.paths.output_dir)
    # First thing: from here on SLURM's time-limit signal saves and requeues instead of killing.
    requeue = requeue_callback(
        cfg.get("slurm", {}).get("requeue_signal"), output_dir / "checkpoints"
    )
    ckpt_path = resume_checkpoint(cfg, output_dir)
    if ckpt_path is not None:
        check_resume_checkpoint(cfg, ckpt_path)
    save_run_config(cfg, output_dir)

    datamodule = instantiate(cfg.data, _convert_="all")
    system = build_system(cfg, datamodule)
    system.run_config = cast(dict, OmegaConf.to_container(cfg, resolve=True))
    callbacks = instantiate_group(cfg.get("callbacks")) + ([requeue] if requeue else [])
    loggers = instantiate_group(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks, loggers)
    system.skip_nonfinite = bool(cfg.trainer.get("skip_nonfinite", False))
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        if requeue:
            requeue.uninstall()

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    rank_zero_only(log.info)("Run directory: %s", output_dir)
    return metrics, {"datamodule": datamodule, "system": system, "trainer": trainer}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@exit_on_user_error
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
