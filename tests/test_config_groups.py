"""An experiment stays usable with every data source of its modality and every trainer group:
its settings of one source or one device layout never leak into another."""

from __future__ import annotations

import inspect

import pytest
import yaml
from hydra.utils import get_class
from omegaconf import OmegaConf

from maskfm.config import CONFIG_DIR

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
DATA_GROUPS = {p.stem: yaml.safe_load(p.read_text()) for p in (CONFIG_DIR / "data").glob("*.yaml")}
# Settings an experiment may give any source of its modality (model-facing sizes).
SHARED_DATA_KEYS = {
    "batch_size",
    "img_size",
    "num_points",
    "voxel_size",
    "max_text_len",
    "tokenizer",
}


def modality(target: str) -> str:
    """maskfm.data.<module>.Class -> <module> (images, points, lidar, captions)."""
    return target.split(".")[2]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_data_settings_fit_every_source_of_its_modality(name, compose_train):
    own = compose_train([f"+experiment={name}"])
    groups = [
        g for g, c in DATA_GROUPS.items() if modality(c["_target_"]) == modality(own.data._target_)
    ]
    assert len(groups) >= 2, f"{name}: only {groups}"
    for group in groups:
        cfg = compose_train([f"+experiment={name}", f"data={group}"])
        composed = OmegaConf.to_container(cfg.data, resolve=False)
        declared = DATA_GROUPS[group]
        leaked = sorted(set(composed) - set(declared))
        assert not leaked, f"+experiment={name} data={group}: keys {leaked} are not data={group}'s"
        params = inspect.signature(get_class(declared["_target_"])).parameters
        assert set(composed) - {"_target_"} <= set(params), (
            f"{group}: {set(composed) - set(params)}"
        )
        changed = {k for k in composed if k != "_target_" and composed[k] != declared[k]}
        assert changed <= SHARED_DATA_KEYS | {"root"}, (
            f"+experiment={name} data={group} changes {sorted(changed - SHARED_DATA_KEYS)} of that source"
        )


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_trainer_cpu_means_one_cpu_process_for_every_recipe(name, compose_train):
    cfg = compose_train([f"+experiment={name}", "trainer=cpu"])
    t = cfg.trainer
    assert (t.accelerator, t.devices, t.num_nodes, t.precision) == ("cpu", 1, 1, "32-true"), name
    assert t.get("strategy", "auto") == "auto"
    gpu = compose_train([f"+experiment={name}", "trainer=gpu"])
    assert (gpu.trainer.accelerator, gpu.trainer.devices) == ("gpu", 1)


def test_recipes_keep_their_own_device_layout(compose_train):
    mae = compose_train(["+experiment=mae_vit_base_imagenet", "data.root=/x"]).trainer
    assert (mae.devices, mae.strategy, mae.accumulate_grad_batches) == (8, "ddp", 8)
    m3ae = compose_train(["+experiment=m3ae_roco", "data.root=/x"]).trainer
    assert (m3ae.devices, m3ae.strategy, m3ae.precision) == (8, "ddp", "16-mixed")
