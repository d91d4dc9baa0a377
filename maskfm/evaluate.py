"""Evaluate a pretrained encoder.

    python -m maskfm.evaluate +experiment=point_mae eval=svm ckpt_path=last
    python -m maskfm.evaluate +experiment=point_mae eval=svm ckpt_path=runs/train/point_mae/<run>/checkpoints/last.ckpt
    python -m maskfm.evaluate +experiment=point_mae eval=svm ckpt_path=/path/to/Point-MAE/pretrain.pth
    python -m maskfm.evaluate +experiment=mae eval=svm ckpt_path=/path/to/mae_pretrain_vit_base.pth
    python -m maskfm.evaluate +experiment=point_mae eval=svm          # random init, the baseline
    python -m maskfm.evaluate +experiment=m3ae eval=mlm_probe ckpt_path=last
    python -m maskfm.evaluate +experiment=m3ae eval=retrieval ckpt_path=last

``ckpt_path`` accepts a maskfm checkpoint, ``last`` (the newest checkpoint of the latest
training run of this experiment), an original MAE or Point-MAE checkpoint, or a Hugging
Face ViTMAE directory (``ckpt_format`` names the layout; ``auto`` recognises it). The model is
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
from maskfm.errors import exit_on_user_error
from maskfm.eval.protocol import build_protocol
from maskfm.interop.checkpoint_file import checkpoint_method
from maskfm.interop.formats import open_weights
from maskfm.interop.imports import import_weights
from maskfm.interop.loading import load_state_dict_with_report
from maskfm.methods.build import build_system
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
    if not (path.is_file() or path.is_dir()):  # a directory: a Hugging Face model
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
    return path


def load_model(cfg: DictConfig, ckpt: Path | None, datamodule=None) -> tuple[torch.nn.Module, dict]:
    """Build the method from the composed config and load its weights; returns (model, info
    for eval.json).

    ``ckpt_format`` (``auto`` | ``maskfm`` | ``mae`` | ``hf_vitmae`` | ``point_mae``) says how
    to read ``ckpt``; ``auto`` recognises each layout by a signature on its keys and refuses
    a file that matches none or several (maskfm/interop/formats.py). The checkpoint is data:
    a maskfm checkpoint's stored config may fill in values of the composed model config
    (``stored_config``, see maskfm/stored_config.py), never choose code. Every tensor of the
    model (maskfm checkpoints) or of its encoder (other layouts; the whole MAE when an MAE
    file has its decoder) must load, unless ``allow_partial_load=true``.
    """
    if ckpt is None:
        log.warning("No ckpt_path: evaluating a randomly initialised encoder (seed %s)", cfg.seed)
        return build_system(cfg, datamodule).model, {"checkpoint": None}
    allow_partial = bool(cfg.get("allow_partial_load", False))
    source = open_weights(ckpt, cfg.get("ckpt_format") or "auto")
    if source.format != "maskfm":
        model = build_system(cfg, datamodule).model
        trust = bool(cfg.get("ckpt_trust_pickle", False))
        report = import_weights(model, source, allow_partial=allow_partial, trust_pickle=trust)
        return model, {"checkpoint": str(ckpt), "format": source.label, **report.summary()}
    checkpoint = source.checkpoint
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
