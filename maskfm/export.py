"""Export a pretrained encoder for other libraries; prints how to load what it wrote.

    python -m maskfm.export +experiment=mae ckpt_path=last export.format=timm
    python -m maskfm.export +experiment=mae ckpt_path=last export.format=hf
    python -m maskfm.export +experiment=mae ckpt_path=last export.format=original
    python -m maskfm.export +experiment=point_mae ckpt_path=last export.format=original
    python -m maskfm.export +experiment=rmae ckpt_path=last export.format=openpcdet

``timm``: a ViT encoder's state dict (``.safetensors``) that ``timm.create_model(name,
pretrained=True, pretrained_cfg_overlay=dict(file=...), num_classes=0, **kwargs)`` loads
strictly (name and kwargs printed). ``hf``: a ``ViTMAEForPreTraining`` directory (MAE) or a
``ViTMAEModel`` one (another ViT encoder). ``original``: MAE's ``mae_pretrain_vit_*.pth``
layout (``{"model": ...}``) or Point-MAE/Point-CMAE's ``{"base_model": ...}``. ``openpcdet``:
R-MAE's backbone as ``{"model_state": backbone_3d.*}``, its input width checked against the
OpenPCDet dataset config of ``data``. The checkpoint is read as ``evaluate`` reads it
(``ckpt_path``, ``ckpt_format``, ``stored_config``, ``allow_partial_load``). The run
directory gets ``export.json`` (what was written and how to load it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

import hydra
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from maskfm.config import CONFIG_DIR, print_config_tree
from maskfm.errors import UserInputError, exit_on_user_error
from maskfm.evaluate import find_checkpoint, load_model
from maskfm.run_dir import register_resolvers

log = logging.getLogger(__name__)
register_resolvers()

EXPORT_FORMATS = ("timm", "hf", "original", "openpcdet")
# MAE's models_vit.py entry points: (embed_dim, depth, heads, patch) -> name
MAE_FINETUNE_MODELS = {
    (768, 12, 12, 16): "vit_base_patch16",
    (1024, 24, 16, 16): "vit_large_patch16",
    (1280, 32, 16, 14): "vit_huge_patch14",
}


def _datamodule_if_needed(cfg: DictConfig):
    """The datamodule, only where the method's constructor needs facts from it (a text
    vocabulary): exporting needs no data, and e.g. an image folder may not be here."""
    from maskfm.data.base import LoaderDataModule

    cls = get_class(cfg.data._target_)
    if getattr(cls, "model_inputs", None) is LoaderDataModule.model_inputs:
        return None
    return instantiate(cfg.data, _convert_="all")


def _vit_encoder(model: Any, fmt: str):
    from maskfm.nn.vit import ViTEncoder

    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, ViTEncoder):
        raise UserInputError(
            f"export.format={fmt} writes a ViT encoder, but {type(model).__name__}'s encoder is "
            f"{type(encoder).__name__}: use export.format="
            + ("openpcdet" if type(model).__name__ == "RMAE" else "original")
        )
    return encoder


def export_timm_format(model: Any, path: Path) -> tuple[dict, list[str]]:
    from maskfm.interop.timm_vit import export_timm, timm_load_snippet

    path, name, kwargs = export_timm(_vit_encoder(model, "timm"), path)
    snippet = timm_load_snippet(path, name, kwargs)
    return {"path": str(path), "timm_model": name, "timm_kwargs": kwargs, "load": snippet}, [
        f"wrote {path} (ViT encoder state dict, timm names)",
        "load it with timm:",
        *("  " + line for line in snippet.splitlines()),
    ]


def export_hf_format(model: Any, path: Path) -> tuple[dict, list[str]]:
    from maskfm.interop.hf_vitmae import export_hf_vitmae

    encoder = _vit_encoder(model, "hf")
    path, cls = export_hf_vitmae(model, path)
    num_patches = encoder.grid_size[0] * encoder.grid_size[1]
    snippet = (
        "import torch\n"
        "from transformers import ViTMAEModel\n"
        f"model = ViTMAEModel.from_pretrained({str(path)!r})  # config mask_ratio 0.0: every patch\n"
        f"noise = torch.arange({num_patches}).float().expand(len(images), -1)  # keeps the patch order\n"
        "tokens = model(pixel_values=images, noise=noise).last_hidden_state  # = maskfm's encoder(images)"
    )
    lines = [f"wrote {path} ({cls}: config.json + model.safetensors)", "load it with transformers:"]
    lines += ["  " + line for line in snippet.splitlines()]
    if cls == "ViTMAEForPreTraining":
        lines.append(
            f"  # to pretrain further: ViTMAEForPreTraining.from_pretrained({str(path)!r}, mask_ratio=0.75)"
        )
    return {"path": str(path), "hf_class": cls, "load": snippet}, lines


def export_original_format(model: Any, path: Path, with_decoder: bool) -> tuple[dict, list[str]]:
    from maskfm.methods.mae import MAE
    from maskfm.nn.point_patch_mae import PointPatchAutoencoder

    if isinstance(model, PointPatchAutoencoder):
        from maskfm.interop.point_mae import export_point_mae_original

        path = export_point_mae_original(cast(nn.Module, model), path)
        repo = "Point-CMAE" if type(model).__name__ == "PointCMAE" else "Point-MAE"
        command = (
            f"python main.py --config cfgs/finetune_modelnet.yaml --finetune_model --ckpts {path} "
            "--exp_name <name>"
        )
        return {"path": str(path), "layout": repo, "load": command}, [
            f"wrote {path} ({{'base_model': ...}} in {repo}'s names, MAE_encoder.*)",
            f"fine-tune it in the {repo} repository:",
            f"  {command}",
        ]
    if not isinstance(model, MAE):
        other = "openpcdet" if type(model).__name__ == "RMAE" else "timm (or hf)"
        raise UserInputError(
            f"export.format=original: no original layout for {type(model).__name__} here; use export.format={other}"
        )
    import torch

    from maskfm.interop.mae import mae_state_dict

    state = mae_state_dict(model, with_decoder=with_decoder)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, path)
    enc = model.encoder
    block: Any = enc.blocks[0]
    key = (enc.embed_dim, len(enc.blocks), int(block.attn.num_heads), enc.patch_size)
    name = MAE_FINETUNE_MODELS.get(key)
    command = (
        f"python main_finetune.py --finetune {path} --model {name} --input_size {enc.grid_size[0] * enc.patch_size}"
        if name
        else f"models_vit.VisionTransformer(img_size={enc.grid_size[0] * enc.patch_size}, "
        f"patch_size={enc.patch_size}, embed_dim={key[0]}, depth={key[1]}, num_heads={key[2]}, "
        "qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6)).load_state_dict(ckpt['model'], strict=False)"
    )
    what = (
        "encoder and decoder (models_mae.py)"
        if with_decoder
        else "encoder (mae_pretrain_vit_*.pth)"
    )
    return {"path": str(path), "layout": "MAE", "load": command}, [
        f"wrote {path} ({{'model': ...}}: the {what} in MAE's names)",
        "fine-tune it in the MAE repository:",
        f"  {command}",
    ]


def export_openpcdet_format(model: Any, path: Path, cfg: DictConfig) -> tuple[dict, list[str]]:
    from maskfm.interop.openpcdet import export_openpcdet
    from maskfm.methods.rmae import RMAE

    if not isinstance(model, RMAE):
        raise UserInputError(
            f"export.format=openpcdet writes R-MAE's sparse backbone, but the config builds {type(model).__name__}"
        )
    expected = cfg.export.get("openpcdet_in_channels")
    path, lines = export_openpcdet(
        model, cfg.data, path, None if expected is None else int(expected)
    )
    return {"path": str(path), "load": lines[-1]}, [
        f"wrote {path} ({{'model_state': backbone_3d.*}})",
        *("  " + line for line in lines),
    ]


def default_path(fmt: str, model: Any, output_dir: Path) -> Path:
    from maskfm.nn.point_patch_mae import PointPatchAutoencoder

    if fmt == "original":
        name = "pretrain.pth" if isinstance(model, PointPatchAutoencoder) else "mae_pretrain.pth"
    else:
        name = {
            "timm": "encoder.safetensors",
            "hf": "hf_vitmae",
            "openpcdet": "openpcdet_backbone.pth",
        }[fmt]
    return output_dir / name


def export(cfg: DictConfig) -> dict:
    """Load ``cfg.ckpt_path`` into the composed method and write ``cfg.export.format``."""
    if OmegaConf.is_missing(cfg.export, "format"):
        raise UserInputError(f"maskfm.export needs export.format={'|'.join(EXPORT_FORMATS)}")
    fmt = cfg.export.format
    if fmt not in EXPORT_FORMATS:
        raise UserInputError(f"export.format={fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    ckpt = find_checkpoint(cfg)
    if ckpt is None:
        raise UserInputError(
            "maskfm.export needs ckpt_path=... (a checkpoint file, last for the latest training run "
            "of this experiment, or an original/Hugging Face checkpoint)"
        )
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    model, info = load_model(cfg, ckpt, _datamodule_if_needed(cfg))
    model.eval()
    path = Path(cfg.export.path).expanduser() if cfg.export.get("path") else None
    path = path or default_path(fmt, model, output_dir)
    if fmt == "timm":
        result, lines = export_timm_format(model, path)
    elif fmt == "hf":
        result, lines = export_hf_format(model, path)
    elif fmt == "original":
        result, lines = export_original_format(model, path, bool(cfg.export.get("with_decoder")))
    else:
        result, lines = export_openpcdet_format(model, path, cfg)
    result = {"format": fmt, "run_name": cfg.run_name, **result, "source": info}
    (output_dir / "export.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"exported {type(model).__name__} from {info['checkpoint']} ({info.get('format')})")
    print("\n".join(lines))
    return result


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
