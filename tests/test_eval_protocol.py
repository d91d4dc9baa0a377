"""Evaluation protocols are a config group: each conf/eval/*.yaml names its class by ``_target_``."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from maskfm.config import CONFIG_DIR
from maskfm.errors import UserInputError
from maskfm.eval.image_text import MLMProbe, Retrieval
from maskfm.eval.knn import KNN
from maskfm.eval.linear_probe import LinearProbe
from maskfm.eval.protocol import Protocol, available_protocols, build_protocol
from maskfm.eval.svm import LinearSVM
from maskfm.eval.voxel_probe import VoxelProbe
from maskfm.evaluate import evaluate
from tests.test_evaluate import TINY_POINTS

PROTOCOLS = {
    "svm": LinearSVM,
    "voxel_probe": VoxelProbe,
    "mlm_probe": MLMProbe,
    "retrieval": Retrieval,
    "linear_probe": LinearProbe,
    "linear_probe_mae": LinearProbe,
    "knn": KNN,
}


def test_every_eval_yaml_is_a_protocol():
    assert (
        available_protocols()
        == sorted(p.stem for p in (CONFIG_DIR / "eval").glob("*.yaml"))
        == sorted(PROTOCOLS)
    )


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_the_four_protocols_instantiate_from_their_yaml(compose_train, name):
    cfg = compose_train([*TINY_POINTS, f"eval={name}"], config_name="evaluate")
    protocol = build_protocol(cfg.eval, seed=7)
    assert type(protocol) is PROTOCOLS[name] and protocol.name == name and protocol.seed == 7
    assert protocol.device == "auto"
    # every key of the yaml is a setting of the protocol, with the yaml's value
    for key, value in OmegaConf.to_container(cfg.eval).items():
        if key != "_target_":
            assert getattr(protocol, key) == value, key


@pytest.mark.parametrize(
    "name, overrides, expected",
    [
        (
            "svm",
            ["eval.C=0.5", "eval.pooling=max", "eval.standardize=true"],
            {"C": 0.5, "pooling": "max", "standardize": True},
        ),
        (
            "mlm_probe",
            ["eval.mode=all", "eval.kinds=[colour]", "eval.num_samples=4"],
            {"mode": "all", "kinds": ["colour"], "num_samples": 4},
        ),
        (
            "retrieval",
            ["eval.num_pairs=6", "eval.ks=[1,5]", "eval.device=cpu"],
            {"num_pairs": 6, "ks": [1, 5], "device": "cpu"},
        ),
        ("voxel_probe", ["eval.epochs=5", "eval.lr=0.1"], {"epochs": 5, "lr": 0.1}),
    ],
)
def test_command_line_overrides_reach_the_protocol(compose_train, name, overrides, expected):
    protocol = build_protocol(
        compose_train([*TINY_POINTS, f"eval={name}", *overrides], config_name="evaluate").eval
    )
    assert {k: getattr(protocol, k) for k in expected} == expected


def test_an_unknown_eval_group_names_the_choices(compose_train):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as caught:
        compose_train([*TINY_POINTS, "eval=nope"], config_name="evaluate")
    assert "eval/nope" in str(caught.value) and all(name in str(caught.value) for name in PROTOCOLS)


@pytest.mark.parametrize(
    "eval_cfg, message",
    [
        (
            {"name": "svm", "C": 1.0},
            r"names no protocol class \(no eval._target_\); use eval= one of "
            + ", ".join(sorted(PROTOCOLS)),
        ),
        (
            {"_target_": "maskfm.eval.svm.NoSuchProtocol", "name": "svm"},
            r"eval._target_=maskfm.eval.svm.NoSuchProtocol: ",
        ),
        (
            {"_target_": "maskfm.eval.svm.LinearSVM", "name": "svm", "gamma": 2},
            r"eval._target_=maskfm.eval.svm.LinearSVM: .*unexpected keyword argument 'gamma'; use eval= one of",
        ),
        ({"_target_": "builtins.dict", "name": "svm"}, r"is a dict, not an evaluation protocol"),
    ],
)
def test_an_invalid_eval_config_is_a_user_error(compose_train, tmp_path, eval_cfg, message):
    with pytest.raises(UserInputError, match=message) as caught:
        build_protocol(OmegaConf.create(eval_cfg))
    assert "\n" not in str(caught.value)  # the command line prints it as one line
    cfg = compose_train([*TINY_POINTS], config_name="evaluate")
    cfg.eval = OmegaConf.create(eval_cfg)
    with pytest.raises(UserInputError, match=message):  # before any data or model is built
        evaluate(cfg)
    assert not (tmp_path / "run" / "eval.json").exists()


@dataclass(kw_only=True)
class CountTestSamples(Protocol):
    """A protocol defined outside maskfm.eval: one class and one eval config are all it takes."""

    scale: int = 1

    def __call__(self, model, device, datamodule):
        n = sum(len(batch["label"]) for batch in datamodule.eval_dataloaders()[1]) * self.scale
        return {"eval": self.name, "num_test": n, "seed": self.seed}, f"{n} test samples"


def test_a_new_protocol_is_one_class_and_one_config(compose_train, tmp_path, capsys):
    cfg = compose_train([*TINY_POINTS, "seed=3"], config_name="evaluate")
    cfg.eval = OmegaConf.create(
        {"_target_": f"{__name__}.CountTestSamples", "name": "count", "scale": 2, "device": "cpu"}
    )
    result = evaluate(cfg)
    assert result["eval"] == "count" and result["num_test"] == 32 and result["seed"] == 3
    assert json.loads((tmp_path / "run" / "eval.json").read_text()) == result
    assert "32 test samples, checkpoint None" in capsys.readouterr().out
