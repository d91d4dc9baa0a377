"""Opt-in pretrained weights from local files (nothing is downloaded): a transformers text
encoder from a saved directory or the local Hugging Face cache, a timm-named ViT state dict.
Weights are data: pickled code is refused, and every tensor must load unless a partial load
is allowed."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskfm.interop.checkpoint_file import CheckpointFileError, read_checkpoint
from maskfm.interop.loading import IncompleteLoadError, load_state_dict_with_report

log = logging.getLogger(__name__)


def build_text_encoder(cfg: Any, vocab_size: int, pad_token_id: int) -> nn.Module:
    """``AutoModel`` from a config (random init) or from a local pretrained directory.

    ``cfg`` has M3AE's ``TextEncoderConfig`` fields: ``pretrained``, ``allow_partial``,
    ``model_type``, ``hidden_size``, ``num_layers``, ``num_heads``, ``intermediate_size``,
    ``max_position_embeddings``, ``dropout``.
    """
    from transformers import AutoConfig, AutoModel

    if cfg.pretrained:
        source = Path(cfg.pretrained).expanduser()
        name = str(source) if source.is_dir() else str(cfg.pretrained)
        try:  # a local directory, or a hub name already in the local Hugging Face cache
            encoder, info = AutoModel.from_pretrained(
                name,
                local_files_only=True,
                add_pooling_layer=False,
                trust_remote_code=False,
                weights_only=True,
                output_loading_info=True,
            )
        except pickle.UnpicklingError as e:  # weights_only refused a pickled object
            raise CheckpointFileError(
                f"model.text.pretrained='{cfg.pretrained}': refused to unpickle its weights "
                f"({str(e).strip().splitlines()[-1] if str(e).strip() else e}); weights hold data, never code"
            ) from e
        except (OSError, ValueError) as e:  # ValueError: not even a valid hub name
            raise FileNotFoundError(
                f"model.text.pretrained='{cfg.pretrained}' is neither a local directory nor in the local "
                "Hugging Face cache (nothing is downloaded; pass a directory saved with save_pretrained)"
            ) from e
        missing = list(info.get("missing_keys") or []) + [
            str(k) for k in info.get("mismatched_keys") or []
        ]
        if missing and not cfg.allow_partial:
            raise IncompleteLoadError(
                f"model.text.pretrained='{cfg.pretrained}' does not set {len(missing)} of the text encoder's tensors "
                f"({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}); model.text.allow_partial=true accepts it"
            )
        if encoder.config.vocab_size < vocab_size:
            raise ValueError(
                f"model.text.pretrained='{cfg.pretrained}' has {encoder.config.vocab_size} token embeddings but the "
                f"tokenizer has {vocab_size} tokens: use that model's own tokenizer (data.tokenizer)"
            )
        return encoder
    config = AutoConfig.for_model(
        cfg.model_type,
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=pad_token_id,
        type_vocab_size=1,
    )
    return AutoModel.from_config(config, add_pooling_layer=False)


def load_image_weights(encoder: nn.Module, path: str, allow_partial: bool = False) -> None:
    """Load a timm-named ViT state dict from a local file (weights only, with a report);
    every ViT tensor must be in it unless ``allow_partial``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"model.image.pretrained='{path}': no such file (nothing is downloaded)"
        )
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(file))
        except Exception as e:  # safetensors raises its own error type for a bad header
            raise CheckpointFileError(
                f"model.image.pretrained='{path}': not a readable safetensors file ({e})"
            ) from e
    else:
        state = read_checkpoint(file, expected="a ViT state dict (.pth/.bin/.safetensors)")
        state = (
            state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
        )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointFileError(f"model.image.pretrained='{path}': not a state dict of tensors")
    state = {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}
    report = load_state_dict_with_report(
        encoder, state, source=f"model.image.pretrained='{file}'", allow_partial=allow_partial
    )
    log.info("image encoder weights from %s:\n%s", file, report.table())
