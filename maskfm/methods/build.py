"""The one place a method and its training system are built from a composed config; train,
evaluate and bench all call these (the optimiser: :meth:`MaskedPretrainer.build_optimizer`)."""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig

from maskfm.methods.contract import MaskedMethod
from maskfm.methods.pretrainer import MaskedPretrainer

log = logging.getLogger(__name__)


def build_method(cfg: DictConfig, datamodule=None) -> MaskedMethod:
    """Masker (``cfg.masking``) + method (``cfg.model``); a datamodule passes the facts the
    model needs (``model_inputs()``: a text vocabulary's size and special ids)."""
    masker = instantiate(cfg.masking)
    log.info("Instantiating method <%s> with %s", cfg.model._target_, masker)
    from_data = datamodule.model_inputs() if datamodule is not None else {}
    method = instantiate(cfg.model, masker=masker, **from_data)
    if not isinstance(method, MaskedMethod):
        raise TypeError(
            f"model._target_={cfg.model._target_} builds a {type(method).__name__}, "
            "not a maskfm.methods.contract.MaskedMethod"
        )
    return method


def build_system(cfg: DictConfig, datamodule=None) -> MaskedPretrainer:
    """The method wrapped in the shared pretrainer, with ``cfg.optim``'s optimiser and schedule."""
    return MaskedPretrainer(
        build_method(cfg, datamodule),
        mask_seed=cfg.seed or 0,
        **instantiate(cfg.optim, _convert_="all"),
    )
