"""A config stored in a file (a checkpoint's ``maskfm_config``) sets values, never code.

The architecture comes from the config the user composed. A checkpoint's stored config may
only fill in values of fields that config already has (sizes, ratios, flags); it never adds
or changes a ``_target_``. Honouring a stored model section whole (``stored_config=model``,
for a run whose config the user no longer has) is allowed only when every ``_target_`` in it
is one of :data:`ALLOWED_TARGETS`, checked recursively before anything is instantiated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from maskfm.errors import UserInputError

log = logging.getLogger(__name__)

# Every class that maskfm's own configs (conf/**/*.yaml) name; tests/test_trust.py keeps
# this list equal to what conf/ uses. Nothing else may come from a stored config.
ALLOWED_TARGETS = frozenset(
    {
        "maskfm.methods.mae.MAE",
        "maskfm.methods.m3ae.M3AE",
        "maskfm.methods.point_mae.PointMAE",
        "maskfm.methods.point_cmae.PointCMAE",
        "maskfm.methods.rmae.RMAE",
        "maskfm.masking.RandomMasker",
        "maskfm.masking.BlockMasker",
        "maskfm.masking.RadialMasker",
        "maskfm.masking.WholeWordMasker",
        "maskfm.data.images.SyntheticImageDataModule",
        "maskfm.data.images.ImageFolderDataModule",
        "maskfm.data.points.PointCloudDataModule",
        "maskfm.data.lidar.LidarDataModule",
        "maskfm.data.captions.CaptionDataModule",
        "maskfm.callbacks.CPUSyncBatchNorm",
        "maskfm.callbacks.ReconstructionPictures",
        "maskfm.callbacks.Throughput",
        "maskfm.callbacks.auto_progress_bar",
        "maskfm.loggers.CSVLogger",
        "maskfm.loggers.wandb_logger",
        "maskfm.run_dir.HydraConfigForSweeps",
        "maskfm.eval.svm.LinearSVM",
        "maskfm.eval.voxel_probe.VoxelProbe",
        "maskfm.eval.image_text.MLMProbe",
        "maskfm.eval.image_text.Retrieval",
        "maskfm.eval.linear_probe.LinearProbe",
        "maskfm.eval.knn.KNN",
        "torch.optim.AdamW",
        "lightning.pytorch.Trainer",
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "lightning.pytorch.loggers.TensorBoardLogger",
    }
)

# Sections of a stored config that are never read back (users add their own callbacks and
# loggers, e.g. ``+callbacks.x._target_=my.Callback``): not checked, never used.
UNUSED_SECTIONS = ("callbacks", "logger")

# How a checkpoint's stored config is used (``stored_config=...`` of train/evaluate).
STORED_CONFIG_MODES = ("values", "model", "ignore")


class UntrustedConfigError(UserInputError):
    """A stored config names code that is not maskfm's, or is not plain values."""


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested dict/list; a list of plain values is
    one leaf."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)) and not all(_is_plain(v) for v in node):
        for i, v in enumerate(node):
            yield from _walk(v, f"{key}[{i}]")
    else:
        yield key, list(node) if isinstance(node, (list, tuple)) else node


def check_stored_config(stored: Any, source: str) -> dict:
    """The stored config as a plain dict, after refusing anything that could choose code.

    Refused, naming ``source`` and the key: a ``_target_`` outside :data:`ALLOWED_TARGETS`
    (at any depth), a value that is not a plain scalar, and an ``${...}`` interpolation
    (a resolver is code). :data:`UNUSED_SECTIONS` are dropped unchecked.
    """
    if stored is None:
        return {}
    if not isinstance(stored, dict):
        raise UntrustedConfigError(
            f"{source}: the stored config is a {type(stored).__name__}, not a mapping"
        )
    stored = {k: v for k, v in stored.items() if k not in UNUSED_SECTIONS}
    for key, value in _walk(stored):
        values = value if isinstance(value, list) else [value]
        if not all(_is_plain(v) for v in values):
            raise UntrustedConfigError(
                f"{source}: stored config key {key} holds a {type(value).__name__}, not a plain value"
            )
        if "_target_" in key.split(".")[:-1] or (
            key.rsplit(".", 1)[-1] == "_target_" and value not in ALLOWED_TARGETS
        ):
            raise UntrustedConfigError(
                f"{source}: stored config key {key} names {value!r}, which is not one of maskfm's classes; "
                "refusing to use this checkpoint's config (nothing was instantiated)"
            )
        if any(isinstance(v, str) and "${" in v for v in values):
            raise UntrustedConfigError(
                f"{source}: stored config key {key} holds an interpolation {value!r}; "
                "stored configs must be resolved values"
            )
    return stored


def differing_values(
    stored: dict, composed: DictConfig, prefix: str
) -> tuple[dict[str, tuple], list[str]]:
    """Leaves where the stored section differs from the composed one.

    Returns ``({dotted key: (composed, stored)}, [stored keys the composed config lacks])``.
    """
    composed_plain = OmegaConf.to_container(composed, resolve=True)
    ours = dict(_walk(composed_plain, prefix))
    differ, unknown = {}, []
    for key, value in _walk(stored, prefix):
        if key not in ours:
            unknown.append(key)
        elif ours[key] != value:
            differ[key] = (ours[key], value)
    return differ, unknown


def method_mismatch(stored_model: dict, composed_model: DictConfig) -> str | None:
    """``stored -> composed`` ``_target_`` of the model section when they differ."""
    ours = composed_model.get("_target_")
    theirs = stored_model.get("_target_")
    if theirs and theirs != ours:
        return theirs
    return None


def fill_values(composed: DictConfig, differ: dict[str, tuple], prefix: str) -> None:
    """Set each differing leaf of ``composed`` (keys relative to ``prefix``) to the stored value.

    Only leaves the composed config already has; ``_target_`` differences are refused by the
    caller before this is called.
    """
    for key, (_, value) in differ.items():
        if key.rsplit(".", 1)[-1] == "_target_":
            raise UntrustedConfigError(f"stored config changes {key}: refusing")
        OmegaConf.update(
            composed, key.removeprefix(prefix + "."), value, merge=False, force_add=False
        )


def as_overrides(differ: dict[str, tuple]) -> str:
    """``key=value`` Hydra overrides that reproduce the stored values."""

    def fmt(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(fmt(x) for x in v) + "]"
        if v is None:
            return "null"
        return str(v).lower() if isinstance(v, bool) else str(v)

    return " ".join(f"{k}={fmt(stored)}" for k, (_, stored) in differ.items())


def apply_stored_model_config(cfg: DictConfig, checkpoint: dict, source: str) -> dict[str, tuple]:
    """Let a maskfm checkpoint's stored model section inform ``cfg.model``, per ``cfg.stored_config``.

    * ``values`` (default): the method must be the composed one (else an error names both);
      sizes and options the checkpoint was trained with fill the composed fields, with a
      warning that lists them as overrides.
    * ``model``: rebuild the stored model section whole (every ``_target_`` allow-listed).
    * ``ignore``: the composed config alone.

    The whole stored config is checked by :func:`check_stored_config` first, whatever the
    mode but ``ignore``. Returns the filled ``{key: (composed, stored)}``.
    """
    mode = cfg.get("stored_config", "values")
    if mode not in STORED_CONFIG_MODES:
        raise UserInputError(
            f"stored_config={mode!r}: expected one of {', '.join(STORED_CONFIG_MODES)}"
        )
    if mode == "ignore":
        return {}
    stored = check_stored_config(checkpoint.get("maskfm_config"), source)
    model = stored.get("model")
    if not isinstance(model, dict) or not model:
        return {}
    theirs = method_mismatch(model, cfg.model)
    if mode == "model":
        log.warning(
            "%s: rebuilding the stored model config (stored_config=model): %s",
            source,
            model.get("_target_"),
        )
        cfg.model = OmegaConf.create(model)
        return {}
    if theirs:
        raise UserInputError(
            f"{source}: a checkpoint of {theirs} (run_name {stored.get('run_name')!r}), but the composed config "
            f"builds {cfg.model.get('_target_')}: compose that method's experiment, or pass stored_config=model "
            "to rebuild the checkpoint's model"
        )
    differ, unknown = differing_values(model, cfg.model, "model")
    if unknown:
        log.warning(
            "%s: stored model keys this version does not have, ignored: %s",
            source,
            ", ".join(unknown),
        )
    if differ:
        fill_values(cfg.model, differ, "model")
        log.warning(
            "%s was trained with other model values than the composed config; using the checkpoint's "
            "(the same by hand: %s; stored_config=ignore keeps the composed ones):\n  %s",
            source,
            as_overrides(differ),
            "\n  ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in differ.items()),
        )
    return differ
