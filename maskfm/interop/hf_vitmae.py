"""Hugging Face ``ViTMAEModel`` / ``ViTMAEForPreTraining`` directories <-> maskfm's ``MAE``.

Reading goes through transformers' own ``from_pretrained`` (local files only, safetensors
only unless pickles are trusted, no remote code), so every on-disk naming transformers
knows is read; the loaded module's parameters are then renamed to maskfm's. In memory,
transformers 4.x names a layer ``encoder.layer.N.attention.attention.query`` /
``attention.output.dense`` / ``intermediate.dense`` / ``output.dense``, 5.x
``layers.N.attention.q_proj`` / ``o_proj`` / ``mlp.fc1`` / ``mlp.fc2``; both are mapped. HF
keeps query, key and value apart, timm (and maskfm) stack them in one ``qkv`` in that order.

HF's ViTMAE shuffles patch tokens with ``noise`` even at ``mask_ratio=0``; the exported
config uses ``mask_ratio=0.0`` (all tokens kept), and ``noise=arange(L)`` keeps their order.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskfm.errors import UserInputError
from maskfm.interop.checkpoint_file import CheckpointFileError
from maskfm.interop.loading import LoadReport, load_state_dict_with_report

log = logging.getLogger(__name__)

# maskfm block tensor -> HF layer tensor, per transformers naming generation
LAYER_NAMES = {
    "v5": {
        "norm1": "layernorm_before",
        "attn.q": "attention.q_proj",
        "attn.k": "attention.k_proj",
        "attn.v": "attention.v_proj",
        "attn.proj": "attention.o_proj",
        "norm2": "layernorm_after",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    },
    "v4": {
        "norm1": "layernorm_before",
        "attn.q": "attention.attention.query",
        "attn.k": "attention.attention.key",
        "attn.v": "attention.attention.value",
        "attn.proj": "attention.output.dense",
        "norm2": "layernorm_after",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    },
}
ENCODER_LAYER = {"v5": "layers.{i}.", "v4": "encoder.layer.{i}."}
EMBEDDINGS = (  # maskfm encoder name -> HF ViTMAEModel name
    ("cls_token", "embeddings.cls_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"),
    ("patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias"),
    ("norm.weight", "layernorm.weight"),
    ("norm.bias", "layernorm.bias"),
)
DECODER = (  # maskfm MAEDecoder name -> HF ViTMAEDecoder name (under "decoder.")
    ("embed.weight", "decoder_embed.weight"),
    ("embed.bias", "decoder_embed.bias"),
    ("mask_token", "mask_token"),
    ("pos_embed", "decoder_pos_embed"),
    ("norm.weight", "decoder_norm.weight"),
    ("norm.bias", "decoder_norm.bias"),
    ("pred.weight", "decoder_pred.weight"),
    ("pred.bias", "decoder_pred.bias"),
)


def naming(keys) -> str:
    """Which transformers generation named these in-memory keys."""
    return "v5" if any(".q_proj." in k for k in keys) else "v4"


def _blocks(ours: str, theirs: str, depth: int, names: dict[str, str]) -> list[tuple[str, Any]]:
    """(maskfm name, HF name or (q, k, v) names) for every tensor of ``depth`` blocks."""
    pairs: list[tuple[str, Any]] = []
    for i in range(depth):
        a, b = ours.format(i=i), theirs.format(i=i)
        for part in ("norm1", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            for t in ("weight", "bias"):
                pairs.append((f"{a}{part}.{t}", f"{b}{names[part]}.{t}"))
        for t in ("weight", "bias"):
            pairs.append((f"{a}attn.qkv.{t}", tuple(f"{b}{names['attn.' + c]}.{t}" for c in "qkv")))
    return pairs


def name_pairs(
    depth: int, decoder_depth: int | None, generation: str, base: str
) -> list[tuple[str, Any]]:
    """Every (maskfm ``MAE`` key, HF key(s)) pair; ``base`` is ``vit.`` in
    ``ViTMAEForPreTraining``, empty in ``ViTMAEModel``; no decoder when ``decoder_depth`` is None."""
    names = LAYER_NAMES[generation]
    pairs: list[tuple[str, Any]] = [(f"encoder.{a}", base + b) for a, b in EMBEDDINGS]
    pairs += _blocks("encoder.blocks.{i}.", base + ENCODER_LAYER[generation], depth, names)
    if decoder_depth is not None:
        pairs += [(f"decoder.{a}", f"decoder.{b}") for a, b in DECODER]
        pairs += _blocks("decoder.blocks.{i}.", "decoder.decoder_layers.{i}.", decoder_depth, names)
    return pairs


def _count(keys, pattern: str) -> int:
    return len({m.group(1) for k in keys if (m := re.match(pattern, k))})


def hf_to_maskfm(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An HF ViTMAE module's state dict -> maskfm ``MAE`` names; returns (renamed, HF keys
    that no maskfm tensor takes)."""
    keys = list(state_dict)
    generation = naming(keys)
    base = "vit." if any(k.startswith("vit.") for k in keys) else ""
    layer = re.escape(base + ENCODER_LAYER[generation].split("{")[0]) + r"(\d+)\."
    depth = _count(keys, layer)
    dec = _count(keys, r"decoder\.decoder_layers\.(\d+)\.")
    has_decoder = any(k.startswith("decoder.") for k in keys)
    out, used = {}, set()
    for ours, theirs in name_pairs(depth, dec if has_decoder else None, generation, base):
        parts: tuple[str, ...] = theirs if isinstance(theirs, tuple) else (theirs,)
        if all(p in state_dict for p in parts):
            out[ours] = torch.cat([state_dict[p] for p in parts])  # q, k, v -> qkv
            used.update(parts)
    return out, [k for k in keys if k not in used]


def maskfm_to_hf(
    state_dict: dict[str, torch.Tensor],
    depth: int,
    decoder_depth: int | None,
    generation: str,
    base: str,
) -> dict[str, torch.Tensor]:
    """maskfm ``MAE`` (or ViTEncoder under ``encoder.``) names -> HF names; qkv split in three."""
    out = {}
    for ours, theirs in name_pairs(depth, decoder_depth, generation, base):
        value = state_dict[ours].detach().cpu()
        if isinstance(theirs, tuple):
            for name, chunk in zip(theirs, value.chunk(3, dim=0), strict=True):
                out[name] = chunk.contiguous()
        else:
            out[theirs] = value.contiguous()
    return out


def read_hf_config(path: Path) -> dict:
    """``config.json`` of an HF directory, checked to be a ViTMAE one."""
    file = path / "config.json"
    if not file.is_file():
        raise CheckpointFileError(
            f"{path}: a directory without config.json; expected a Hugging Face ViTMAE directory"
        )
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointFileError(f"{file}: not valid JSON ({e})") from e
    if not isinstance(config, dict) or config.get("model_type") != "vit_mae":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise CheckpointFileError(
            f"{file}: model_type {kind!r}, expected 'vit_mae' (a ViTMAEModel or ViTMAEForPreTraining directory)"
        )
    return config


def check_hf_config(config: Any, model: nn.Module, source: str) -> None:
    """Architecture facts the weights do not show: heads, activation, qkv bias, LayerNorm eps."""
    encoder: Any = model.encoder
    heads = encoder.blocks[0].attn.num_heads if len(encoder.blocks) else None
    problems = []
    if heads is not None and config.num_attention_heads != heads:
        problems.append(
            f"num_attention_heads={config.num_attention_heads} but model.num_heads={heads}"
        )
    if config.hidden_act != "gelu":
        problems.append(f"hidden_act={config.hidden_act!r} (maskfm's ViT uses exact GELU)")
    if not getattr(config, "qkv_bias", True):
        problems.append("qkv_bias=false (maskfm's ViT has a qkv bias)")
    if problems:
        raise UserInputError(
            f"{source}: cannot be computed by maskfm's ViT: " + "; ".join(problems)
        )
    if abs(config.layer_norm_eps - 1e-6) > 1e-12:
        log.warning(
            "%s: layer_norm_eps=%g; maskfm's ViT (and MAE's original) uses 1e-6, features differ slightly",
            source,
            config.layer_norm_eps,
        )


def load_hf_vitmae(
    model: nn.Module, path: str | Path, allow_partial: bool = False, trust_pickle: bool = False
) -> LoadReport:
    """Load a local HF ViTMAE directory into a maskfm method with a ``ViTEncoder`` (the
    decoder too when the method is MAE and the directory has one)."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

    from maskfm.methods.mae import MAE

    path = Path(path).expanduser()
    config_json = read_hf_config(path)
    has_safetensors = any(path.glob("*.safetensors"))
    if not has_safetensors and not trust_pickle:
        found = ", ".join(sorted(p.name for p in path.iterdir())[:6])
        raise CheckpointFileError(
            f"{path}: no .safetensors weights (it holds {found}); a pytorch_model.bin is a pickle: "
            "convert it to safetensors, or pass ckpt_trust_pickle=true if you trust its source"
        )
    pretraining = "ViTMAEForPreTraining" in (config_json.get("architectures") or [])
    cls = ViTMAEForPreTraining if pretraining and isinstance(model, MAE) else ViTMAEModel
    try:
        loaded: Any = cls.from_pretrained(
            str(path),
            local_files_only=True,
            use_safetensors=has_safetensors,
            output_loading_info=True,
        )
    except pickle.UnpicklingError as e:
        raise CheckpointFileError(f"{path}: refused to unpickle its weights ({e})") from e
    except (OSError, ValueError) as e:
        raise CheckpointFileError(f"{path}: transformers could not read it ({e})") from e
    hf, info = loaded
    config = hf.config
    assert isinstance(config, ViTMAEConfig)
    check_hf_config(config, model, str(path))
    never_loaded = set(info.get("missing_keys") or []) | {
        str(k) for k in info.get("mismatched_keys") or []
    }
    hf_state = {k: v for k, v in hf.state_dict().items() if k not in never_loaded}
    state, unused = hf_to_maskfm(hf_state)
    if not isinstance(model, MAE):  # e.g. M3AE: its image encoder only
        state = {k: v for k, v in state.items() if k.startswith("encoder.")}
    report = load_state_dict_with_report(
        model,
        state,
        source=str(path),
        required_prefix="" if cls is ViTMAEForPreTraining else "encoder.",
        allow_partial=allow_partial,
        hint=f"a Hugging Face {cls.__name__} loaded into {type(model).__name__}",
    )
    report.unexpected += [f"{k} (hf)" for k in unused] + [
        f"{k} (hf, not in the directory)" for k in sorted(never_loaded)
    ]
    log.info("Loaded %s into %s:\n%s", path, type(model).__name__, report.table())
    return report


def hf_config_for(method: nn.Module, with_decoder: bool) -> Any:
    """A ``ViTMAEConfig`` of the same architecture as ``method`` (mask_ratio 0: every token)."""
    from transformers import ViTMAEConfig

    encoder: Any = method.encoder
    block = encoder.blocks[0]
    image_size = [
        g * encoder.patch_size for g in encoder.grid_size
    ]  # HF's (un)patchify wants an int
    kwargs: dict[str, Any] = dict(
        hidden_size=encoder.embed_dim,
        num_hidden_layers=len(encoder.blocks),
        num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.fc1.out_features,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-6,
        image_size=image_size[0] if image_size[0] == image_size[1] else image_size,
        patch_size=encoder.patch_size,
        num_channels=encoder.patch_embed.proj.in_channels,
        qkv_bias=True,
        mask_ratio=0.0,
        norm_pix_loss=bool(getattr(method, "norm_pix_loss", False)),
    )
    if with_decoder:
        decoder: Any = method.decoder
        dblock = decoder.blocks[0]
        kwargs.update(
            decoder_hidden_size=decoder.embed.out_features,
            decoder_num_hidden_layers=len(decoder.blocks),
            decoder_num_attention_heads=dblock.attn.num_heads,
            decoder_intermediate_size=dblock.mlp.fc1.out_features,
        )
    return ViTMAEConfig(**kwargs)


def export_hf_vitmae(method: nn.Module, path: str | Path) -> tuple[Path, str]:
    """Write an HF directory (config.json + model.safetensors): ``ViTMAEForPreTraining``
    for maskfm's MAE (encoder and decoder), ``ViTMAEModel`` for another ViT encoder (M3AE's
    image encoder). Returns (directory, class name)."""
    from transformers import ViTMAEForPreTraining, ViTMAEModel

    from maskfm.methods.mae import MAE

    with_decoder = isinstance(method, MAE)
    config = hf_config_for(method, with_decoder)
    cls = ViTMAEForPreTraining if with_decoder else ViTMAEModel
    hf = cls(config)
    own = hf.state_dict()
    encoder: Any = method.encoder
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    decoder_depth = None
    if with_decoder:
        decoder: Any = method.decoder
        state.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
        decoder_depth = len(decoder.blocks)
    base = "vit." if with_decoder else ""
    hf_state = maskfm_to_hf(state, len(encoder.blocks), decoder_depth, naming(own), base)
    hf.load_state_dict(hf_state, strict=True)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(path))  # safetensors (the default since transformers 4.35)
    return path, cls.__name__
