"""Evaluate a pretrained encoder.

    python -m maskfm.evaluate +experiment=point_mae eval=svm ckpt_path=last
    python -m maskfm.evaluate +experiment=point_mae eval=svm ckpt_path=runs/train/point_mae/<run>/checkpoints/last.ckpt
    python -m maskfm.evaluate +experiment=point_mae eval=svm ckpt_path=/path/to/Point-MAE/pretrain.pth
    python -m maskfm.evaluate +experiment=point_mae eval=svm          # random init, the baseline
    python -m maskfm.evaluate +experiment=m3ae eval=mlm_probe ckpt_path=last
    python -m maskfm.evaluate +experiment=m3ae eval=retrieval ckpt_path=last

``ckpt_path`` accepts a maskfm checkpoint, ``last`` (the newest checkpoint of the latest
training run of this experiment) or an original Point-MAE ``pretrain.pth``. The model is
built from the composed config; a maskfm checkpoint's stored sizes fill in its values
(``stored_config=values|model|ignore``), never its classes. A checkpoint that does not set
every model (encoder) tensor is an error unless ``allow_partial_load=true``. Results go to ``eval.json`` in the evaluation's run directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from maskfm.config import CONFIG_DIR, print_config_tree
from maskfm.errors import UserInputError, exit_on_user_error
from maskfm.eval.protocol import build_protocol
from maskfm.interop.checkpoint_file import (
    CheckpointFileError,
    checkpoint_method,
    is_maskfm_checkpoint,
    read_checkpoint,
)
from maskfm.interop.loading import load_state_dict_with_report
from maskfm.interop.point_mae import is_original_checkpoint, load_point_mae_checkpoint
from maskfm.methods.build import build_system
from maskfm.methods.point_mae import PointMAE
from maskfm.run_dir import latest_checkpoint, latest_run_with_checkpoint, register_resolvers
from maskfm.stored_config import apply_stored_model_config

log = logging.getLogger(__name__)
register_resolvers()


def find_checkpoint(cfg: DictConfig) -> Path | None:
    """``ckpt_path`` as a file: ``last`` is the newest checkpoint of the latest training run."""
    if cfg.ckpt_path in (None, ""):
        return None
    if cfg.ckpt_path == "last":
        run = latest_run_with_checkpoint(Path(cfg.paths.log_dir) / "train" / cfg.run_name)
        if run is None:
            raise FileNotFoundError(
                f"ckpt_path=last: no training run of {cfg.run_name!r} with a checkpoint under "
                f"{Path(cfg.paths.log_dir) / 'train' / cfg.run_name}"
            )
        return latest_checkpoint(run)
    path = Path(cfg.ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
    return path


def load_model(cfg: DictConfig, ckpt: Path | None, datamodule=None) -> tuple[torch.nn.Module, dict]:
    """Build the method from the composed config and load its weights; returns (model, info
    for eval.json).

    The checkpoint is data: its stored config may fill in values of the composed model
    config (``stored_config``, see maskfm/stored_config.py), never choose code. Every
    tensor of the model (maskfm checkpoints) or of its encoder (original checkpoints) must
    load, unless ``allow_partial_load=true``.
    """
    if ckpt is None:
        log.warning("No ckpt_path: evaluating a randomly initialised encoder (seed %s)", cfg.seed)
        return build_system(cfg, datamodule).model, {"checkpoint": None}
    allow_partial = bool(cfg.get("allow_partial_load", False))
    checkpoint = read_checkpoint(
        ckpt, expected="a maskfm checkpoint (.ckpt) or an original Point-MAE pretrain.pth"
    )
    if is_original_checkpoint(checkpoint):
        model = build_system(cfg, datamodule).model
        if not isinstance(model, PointMAE):
            raise UserInputError(
                f"{ckpt}: an original Point-MAE checkpoint, but the composed config builds "
                f"{type(model).__name__}: use +experiment=point_mae_shapenet (or point_mae)"
            )
        report = load_point_mae_checkpoint(model, ckpt, allow_partial=allow_partial)
        return model, {"checkpoint": str(ckpt), "format": "original Point-MAE", **report.summary()}
    if not is_maskfm_checkpoint(checkpoint):
        keys = (
            ", ".join(map(str, list(checkpoint)[:8]))
            if isinstance(checkpoint, dict)
            else type(checkpoint).__name__
        )
        raise CheckpointFileError(
            f"{ckpt}: neither a maskfm checkpoint (no 'state_dict') nor an original "
            f"Point-MAE pretrain.pth (no 'base_model'); it holds: {keys}"
        )
    filled = apply_stored_model_config(cfg, checkpoint, str(ckpt))
    system = build_system(cfg, datamodule)
    report = load_state_dict_with_report(
        system,
        checkpoint["state_dict"],
        source=str(ckpt),
        required_prefix="model.",
        allow_partial=allow_partial,
        hint=_method_hint(checkpoint),
    )
    log.info("Loaded %s:\n%s", ckpt, report.table())
    return system.model, {
        "checkpoint": str(ckpt),
        "format": "maskfm",
        "global_step": checkpoint.get("global_step"),
        "values_from_checkpoint": {k: v for k, (_, v) in filled.items()},
        **report.summary(),
    }


def _method_hint(checkpoint: dict) -> str:
    method = checkpoint_method(checkpoint)
    return f"the checkpoint was trained with {method}" if method else ""


def evaluate(cfg: DictConfig) -> dict:
    """Run the protocol ``cfg.eval`` names (``maskfm.eval``; see maskfm/eval/protocol.py) on
    ``cfg.data`` with the encoder of ``cfg.ckpt_path``."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    protocol = build_protocol(cfg.eval, seed=cfg.get("seed") or 0)
    datamodule = instantiate(cfg.data, _convert_="all")
    model, info = load_model(cfg, find_checkpoint(cfg), datamodule)
    device = torch.device(
        "cuda" if torch.cuda.is_available() and protocol.device != "cpu" else "cpu"
    )
    model.to(device).eval()

    result, summary = protocol(model, device, datamodule)
    result = {**result, "run_name": cfg.run_name, **info}
    (output_dir / "eval.json").write_text(json.dumps(result, indent=2))
    loaded = (
        f" ({info['required_loaded']} of {info['required_tensors']} tensors loaded: PARTIAL LOAD)"
        if info.get("required_loaded", 0) < info.get("required_tensors", 0)
        else ""
    )
    print(f"{summary}, checkpoint {info['checkpoint']}{loaded}")
    print(f"wrote {output_dir / 'eval.json'}")
    return result


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
