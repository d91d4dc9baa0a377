"""`maskfm.evaluate eval=svm`: frozen features + linear SVM, from maskfm and original checkpoints."""

import json

import numpy as np
import pytest
import torch

from maskfm.eval.svm import linear_svm_accuracy, pool_tokens
from maskfm.evaluate import evaluate
from maskfm.methods.point_mae import PointMAE
from maskfm.train import train
from tests.test_point_methods import original_point_mae_state_dict

TINY_POINTS = [
    "+experiment=point_mae",
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "model.pointnet_hidden=[16,32,64]",
    "model.num_groups=16",
    "model.group_size=16",
    "data.num_points=256",
    "data.batch_size=8",
    "data.num_train=32",
    "data.num_val=16",
]


def test_pool_tokens_and_svm_on_separable_features():
    tokens = torch.tensor([[[1.0, 5.0], [3.0, -1.0]]])
    assert torch.equal(pool_tokens(tokens, "max_mean"), torch.tensor([[3.0, 5.0, 2.0, 2.0]]))
    assert torch.equal(pool_tokens(tokens, "max_plus_mean"), torch.tensor([[5.0, 7.0]]))
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool_tokens(tokens, "cls")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] > 0).astype(int)
    scores = linear_svm_accuracy(x[:100], y[:100], x[100:], y[100:])
    assert scores["accuracy"] > 95 and scores["train_accuracy"] > 95


def test_svm_eval_of_a_trained_checkpoint_and_of_random_init(compose_train, tmp_path):
    cfg = compose_train([*TINY_POINTS, "trainer.max_steps=4", "logger=none"])
    _, objects = train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and objects["trainer"].global_step == 4

    cfg = compose_train([*TINY_POINTS, "eval=svm", f"ckpt_path={ckpt}"], config_name="evaluate")
    result = evaluate(cfg)
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved == result
    assert result["format"] == "maskfm" and result["global_step"] == 4
    assert result["num_train"] == 32 and result["num_test"] == 16
    assert result["feature_dim"] == 64 and 0 <= result["accuracy"] <= 100

    cfg = compose_train([*TINY_POINTS, "eval=svm"], config_name="evaluate")
    baseline = evaluate(cfg)
    assert baseline["checkpoint"] is None


def test_svm_eval_of_an_original_point_mae_checkpoint(compose_train, tmp_path):
    sd = original_point_mae_state_dict(PointMAE())
    path = tmp_path / "pretrain.pth"
    torch.save({"base_model": sd, "epoch": 300}, path)
    released = [
        "+experiment=point_mae_shapenet",
        "data=synthetic_shapes",
        "trainer=cpu",
        "data.batch_size=8",
        "data.num_train=16",
        "data.num_val=8",
    ]
    cfg = compose_train([*released, "eval=svm", f"ckpt_path={path}"], config_name="evaluate")
    result = evaluate(cfg)
    assert result["format"] == "original Point-MAE"
    assert result["missing"] == [] and result["unexpected"] == []
    assert result["feature_dim"] == 768


def test_missing_checkpoint_is_named(compose_train, tmp_path):
    cfg = compose_train(
        [*TINY_POINTS, "eval=svm", f"ckpt_path={tmp_path}/nope.ckpt"], config_name="evaluate"
    )
    with pytest.raises(FileNotFoundError, match="nope.ckpt: no such checkpoint file"):
        evaluate(cfg)


@pytest.mark.parametrize("dataset", ["modelnet40", "scanobjectnn"])
def test_svm_eval_reads_the_real_formats(compose_train, tmp_path, dataset):
    from tests.test_data_points import make_modelnet, make_scan

    if dataset == "modelnet40":
        root = make_modelnet(tmp_path / "modelnet40_normal_resampled")
        extra = []
    else:
        make_scan(tmp_path / "ScanObjectNN", "hardest")
        root, extra = tmp_path / "ScanObjectNN", ["data.variant=hardest"]
    small = [o for o in TINY_POINTS if not o.startswith(("data.num_", "data.batch"))]
    cfg = compose_train(
        [
            *small,
            f"data={dataset}",
            f"data.root={root}",
            *extra,
            "data.num_points=32",
            "data.batch_size=4",
            "data.num_workers=0",
            "model.num_groups=8",
            "model.group_size=4",
            "eval=svm",
        ],
        config_name="evaluate",
    )
    result = evaluate(cfg)
    expected = {"modelnet40": (6, 3), "scanobjectnn": (6, 6)}[dataset]
    assert (result["num_train"], result["num_test"]) == expected
    assert result["dataset"] == dataset and 0 <= result["accuracy"] <= 100
