"""What an evaluation protocol is: a class named by ``_target_`` in ``conf/eval/<name>.yaml``.

``python -m maskfm.evaluate eval=<name>`` instantiates ``cfg.eval`` (the yaml's values are
the constructor's keyword arguments, so ``eval.C=0.5`` overrides one; the run's ``seed`` is
passed too) and calls it once::

    result, summary = protocol(model, device, datamodule)

``result`` goes to ``eval.json`` (with the run's name and checkpoint information added) and
``summary`` is the one line printed. A new protocol is one module in ``maskfm/eval/`` with a
subclass of :class:`Protocol` plus one ``conf/eval/<name>.yaml`` naming it (which also
puts its ``_target_`` on ``maskfm.stored_config.ALLOWED_TARGETS``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from maskfm.errors import UserInputError


@dataclass(kw_only=True)
class Protocol:
    """Base of the evaluation protocols; subclasses add their settings as fields."""

    name: str  # conf/eval/<name>.yaml; printed with the config
    device: str = "auto"  # auto | cpu: read by maskfm.evaluate to place the model
    seed: int = 0  # the run's seed (maskfm.evaluate passes it)

    def __call__(
        self, model: torch.nn.Module, device: torch.device, datamodule
    ) -> tuple[dict, str]:
        """Evaluate ``model`` (already on ``device``, in eval mode) on ``datamodule``; returns
        (result for eval.json, one-line summary)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement __call__")


def available_protocols() -> list[str]:
    """The ``eval=`` choices: the names of ``conf/eval/*.yaml``."""
    from maskfm.config import CONFIG_DIR

    return sorted(p.stem for p in (CONFIG_DIR / "eval").glob("*.yaml"))


def build_protocol(eval_cfg: DictConfig, seed: int = 0) -> Protocol:
    """Instantiate ``cfg.eval``; an eval config that does not name a :class:`Protocol`, or
    that its class refuses, is a :class:`UserInputError` naming the choices."""
    choices = f"eval= one of {', '.join(available_protocols())} (conf/eval/*.yaml)"
    target = eval_cfg.get("_target_") if isinstance(eval_cfg, DictConfig) else None
    if not isinstance(target, str):
        raise UserInputError(
            f"the eval config names no protocol class (no eval._target_); use {choices}"
        )
    try:
        protocol = instantiate(eval_cfg, _convert_="all", seed=seed)
    except InstantiationException as e:  # what the class (or finding it) raised, on one line
        reason = " ".join(str(e.__cause__ or e).split())
        raise UserInputError(f"eval._target_={target}: {reason}; use {choices}") from e
    if not isinstance(protocol, Protocol):
        raise UserInputError(
            f"eval._target_={target} is a {type(protocol).__name__}, not an evaluation "
            f"protocol (a maskfm.eval.protocol.Protocol); use {choices}"
        )
    return protocol
