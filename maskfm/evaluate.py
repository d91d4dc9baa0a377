"""Evaluate a pretrained encoder.

    python -m maskfm.evaluate +experiment=point_mae eval=svm ckpt_path=last
    python -m maskfm.evaluate +experiment=point_mae eval=svm ckpt_path=runs/train/point_mae/<run>/checkpoints/last.ckpt
    python -m maskfm.evaluate +experiment=point_mae eval=svm ckpt_path=/path/to/Point-MAE/pretrain.pth
    python -m maskfm.evaluate +experiment=point_mae eval=svm          # random init, the baseline
    python -m maskfm.evaluate +experiment=m3ae eval=mlm_probe ckpt_path=last
    python -m maskfm.evaluate +experiment=m3ae eval=retrieval ckpt_path=last

``ckpt_path`` accepts a maskfm checkpoint (its stored model config is used), ``last`` (the
newest checkpoint of the latest training run of this experiment) or an original Point-MAE
``pretrain.pth``. Results go to ``eval.json`` in the evaluation's run directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from maskfm.config import CONFIG_DIR, print_config_tree
from maskfm.eval.image_text import mlm_probe as probe_grounded_words
from maskfm.eval.image_text import retrieval as rank_pairs
from maskfm.eval.svm import extract_features, linear_svm_accuracy
from maskfm.eval.voxel_probe import extract_voxel_features, segmentation_scores, train_linear_probe
from maskfm.interop.point_mae import is_original_checkpoint, load_point_mae_checkpoint
from maskfm.run_dir import latest_checkpoint, latest_run_with_checkpoint, register_resolvers
from maskfm.train import build_system

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
    """Build the method and load its weights; returns (model, info for eval.json)."""
    if ckpt is None:
        log.warning("No ckpt_path: evaluating a randomly initialised encoder (seed %s)", cfg.seed)
        return build_system(cfg, datamodule).model, {"checkpoint": None}
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    if is_original_checkpoint(checkpoint):
        model = build_system(cfg, datamodule).model
        report = load_point_mae_checkpoint(model, ckpt)
        return model, {"checkpoint": str(ckpt), "format": "original Point-MAE",
                       "missing": report.missing, "unexpected": report.unexpected}
    stored = checkpoint.get("maskfm_config") or {}
    if stored.get("model"):  # evaluate the architecture the checkpoint was trained with
        cfg.model = OmegaConf.create(stored["model"])
    system = build_system(cfg, datamodule)
    system.load_state_dict(checkpoint["state_dict"])
    return system.model, {"checkpoint": str(ckpt), "format": "maskfm",
                          "global_step": checkpoint.get("global_step")}


def evaluate(cfg: DictConfig) -> dict:
    """Run ``cfg.eval`` on ``cfg.data`` with the encoder of ``cfg.ckpt_path``."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    datamodule = instantiate(cfg.data, _convert_="all")
    model, info = load_model(cfg, find_checkpoint(cfg), datamodule)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.eval.device != "cpu" else "cpu")
    model.to(device).eval()

    protocols = {"svm": linear_svm, "voxel_probe": voxel_probe, "mlm_probe": mlm_probe,
                 "retrieval": retrieval}
    if cfg.eval.name not in protocols:
        raise ValueError(f"unknown evaluation {cfg.eval.name!r}; available: {', '.join(protocols)}")
    result, summary = protocols[cfg.eval.name](cfg, model, device, datamodule)
    result = {**result, "run_name": cfg.run_name, **info}
    (output_dir / "eval.json").write_text(json.dumps(result, indent=2))
    print(f"{summary}, checkpoint {info['checkpoint']}")
    print(f"wrote {output_dir / 'eval.json'}")
    return result


def linear_svm(cfg: DictConfig, model, device, datamodule) -> tuple[dict, str]:
    """Linear SVM on pooled frozen features (point methods)."""
    train_loader, test_loader = datamodule.eval_dataloaders()
    train_x, train_y = extract_features(model, train_loader, cfg.eval.pooling, device)
    test_x, test_y = extract_features(model, test_loader, cfg.eval.pooling, device)
    scores = linear_svm_accuracy(train_x, train_y, test_x, test_y, C=cfg.eval.C,
                                 max_iter=cfg.eval.max_iter, seed=cfg.seed or 0,
                                 standardize=cfg.eval.standardize)
    result = {
        "eval": "svm", **scores, "num_train": len(train_y), "num_test": len(test_y),
        "feature_dim": int(train_x.shape[1]), "pooling": cfg.eval.pooling, "C": cfg.eval.C,
        "standardize": cfg.eval.standardize,
        "data": cfg.data._target_.rsplit(".", 1)[-1], "dataset": cfg.data.get("dataset"),
    }
    summary = (f"linear SVM on {result['dataset'] or result['data']}: test accuracy "
               f"{scores['accuracy']:.2f} % (train {scores['train_accuracy']:.2f} %), "
               f"{result['num_train']} train / {result['num_test']} test")
    return result, summary


def voxel_probe(cfg: DictConfig, model, device, datamodule) -> tuple[dict, str]:
    """Linear per-voxel probe of frozen features (LiDAR methods)."""
    train_loader, test_loader = datamodule.eval_dataloaders()
    names = list(getattr(datamodule, "class_names", [])) or None
    k = len(names) if names else int(cfg.eval.num_classes)
    x, y = extract_voxel_features(model, train_loader, k, device, cfg.eval.max_voxels_per_sweep, cfg.seed or 0)
    predict = train_linear_probe(x, y, k, cfg.eval.epochs, cfg.eval.lr, cfg.seed or 0)
    xt, yt = extract_voxel_features(model, test_loader, k, device)
    scores = segmentation_scores(predict(xt), yt, k, names)
    result = {"eval": "voxel_probe", **scores, "num_train_voxels": len(y), "num_test_voxels": len(yt),
              "feature_dim": int(x.shape[1])}
    summary = (f"voxel probe: test mIoU {scores['miou']:.2f} %, accuracy {scores['accuracy']:.2f} % "
               f"({len(y)} train / {len(yt)} test voxels)")
    return result, summary


def _held_out_loader(datamodule):
    """The held-out (validation) loader, unshuffled, with every sample."""
    return datamodule.eval_dataloaders()[1]


def mlm_probe(cfg: DictConfig, model, device, datamodule) -> tuple[dict, str]:
    """Masked image-grounded words, true picture vs blank picture (image-text methods)."""
    result = probe_grounded_words(
        model, _held_out_loader(datamodule), datamodule.mask_token_id, kinds=list(cfg.eval.kinds),
        mode=cfg.eval.mode, max_samples=cfg.eval.num_samples, device=device,
    )
    result = {"eval": "mlm_probe", **result}
    t, b = result["true_image"], result["blank_image"]
    per_kind = ", ".join(f"{k} {t[f'{k}_accuracy']:.1f} vs {b[f'{k}_accuracy']:.1f}"
                         for k in result["kinds"] if f"{k}_accuracy" in t)
    summary = (f"masked grounded words ({result['num_words']} in {result['num_samples']} held-out captions): "
               f"true image {t['word_accuracy']:.2f} %, blank image {b['word_accuracy']:.2f} %, "
               f"gap {result['gap']:+.2f} points ({per_kind})")
    return result, summary


def retrieval(cfg: DictConfig, model, device, datamodule) -> tuple[dict, str]:
    """Image-text retrieval by the ITM head (image-text methods)."""
    result = rank_pairs(model, _held_out_loader(datamodule), num_pairs=cfg.eval.num_pairs,
                        ks=list(cfg.eval.ks), device=device)
    result = {"eval": "retrieval", **result}
    fmt = lambda r: " ".join(f"{k} {v:.1f}" for k, v in r.items())  # noqa: E731
    summary = (f"retrieval over {result['num_pairs']} held-out pairs: image->text {fmt(result['image_to_text'])}; "
               f"text->image {fmt(result['text_to_image'])} (chance {fmt(result['chance'])})")
    return result, summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
