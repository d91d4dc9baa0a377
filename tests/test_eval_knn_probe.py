"""`eval=knn` and `eval=linear_probe`: the vote, LARS, the schedule, pooling, end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader

from maskfm.errors import UserInputError
from maskfm.eval.features import pool_features
from maskfm.eval.knn import KNN, knn_votes
from maskfm.eval.lars import LARS
from maskfm.eval.linear_probe import LinearProbe, lr_at, probe_head, topk_accuracy
from maskfm.evaluate import evaluate
from tests.helpers import TINY_MAE
from tests.test_evaluate import TINY_POINTS

# ------------------------------------------------------------------------------- k-NN vote


def test_knn_votes_by_hand():
    """Query (1, 0); train cosines 0.99875 (class 1), 0.8 and 0.6 (class 0), -1 (class 1).
    With k=3 the majority is class 0, the temperature-weighted vote decides."""
    train = torch.tensor([[1.0, 0.05], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])
    labels = torch.tensor([1, 0, 0, 1])
    query = torch.tensor([[2.0, 0.0]])  # not unit length: cosine, not dot product
    c1 = 1 / math.sqrt(1 + 0.05**2)
    votes = knn_votes(train, labels, query, num_classes=3, k=3, temperature=0.07)
    expected = [math.exp(0.8 / 0.07) + math.exp(0.6 / 0.07), math.exp(c1 / 0.07), 0.0]
    assert votes.shape == (1, 3)
    assert votes[0].tolist() == pytest.approx(expected, rel=1e-4)
    assert int(votes.argmax()) == 1  # the one close neighbour outweighs two farther ones
    flat = knn_votes(train, labels, query, num_classes=3, k=3, temperature=10.0)
    expected = [math.exp(0.08) + math.exp(0.06), math.exp(c1 / 10), 0.0]
    assert flat[0].tolist() == pytest.approx(expected, rel=1e-5)
    assert int(flat.argmax()) == 0  # near-uniform weights: the majority wins
    # k larger than the memory: every train sample votes
    all4 = knn_votes(train, labels, query, num_classes=2, k=50, temperature=1.0)
    assert all4[0, 1].item() == pytest.approx(math.exp(c1) + math.exp(-1.0), rel=1e-5)


def test_knn_votes_chunks_agree():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 8, generator=g), torch.randn(30, 8, generator=g)
    labels = torch.randint(0, 4, (50,), generator=g)
    full = knn_votes(train, labels, test, 4, k=5)
    assert torch.allclose(knn_votes(train, labels, test, 4, k=5, chunk=7), full)


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(100 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(200 / 3)
    assert topk_accuracy(logits, labels, 5) == 100.0


# ------------------------------------------------------------------------- pooling


def test_pool_features_cls_mean_and_points():
    tokens = torch.tensor([[[9.0, 9.0], [1.0, 4.0], [3.0, 0.0]]])  # CLS, then two patches
    assert pool_features(tokens, "auto", cls_first=True).tolist() == [[9.0, 9.0]]
    assert pool_features(tokens, "mean", cls_first=True).tolist() == [[2.0, 2.0]]  # no CLS
    assert pool_features(tokens, "max_mean", cls_first=True).tolist() == [[3.0, 4.0, 2.0, 2.0]]
    points = tokens[:, 1:]
    assert pool_features(points, "auto", cls_first=False).tolist() == [[3.0, 4.0, 2.0, 2.0]]
    with pytest.raises(UserInputError, match="needs a CLS token"):
        pool_features(points, "cls", cls_first=False)
    with pytest.raises(UserInputError, match="eval.pooling must be one of"):
        KNN(name="knn", pooling="median")


# -------------------------------------------------------------------- LARS and schedule


def test_lars_steps_by_hand():
    """Two steps: the 2-D weight's update is rescaled by 0.001 * |w| / |g + wd w|, the bias's
    is not (and is not decayed); momentum 0.9 carries the first update into the second."""
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # |w| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=2.0, weight_decay=0.5, momentum=0.9, trust_coefficient=0.001)
    w.grad, b.grad = torch.tensor([[0.5, -2.0]]), torch.tensor([0.25])
    opt.step()
    # g + wd w = (2, 0), norm 2 -> scaled by 0.001 * 5 / 2 = 0.0025 -> mu = (0.005, 0)
    assert w[0].tolist() == pytest.approx([3.0 - 2.0 * 0.005, 4.0])
    assert b.tolist() == pytest.approx([1.0 - 2.0 * 0.25])  # plain SGD step, no decay
    w.grad, b.grad = torch.zeros(1, 2), torch.tensor([0.0])
    w_before = w.detach().clone()
    opt.step()
    # g + wd w = 0.5 w; trust ratio 0.001 |w| / (0.5 |w|) = 0.002 -> update = 0.001 w
    mu = torch.tensor([[0.9 * 0.005, 0.0]]) + 0.001 * w_before
    assert torch.allclose(w.detach(), w_before - 2.0 * mu)
    assert b.tolist() == pytest.approx([0.5 - 2.0 * 0.9 * 0.25])


def test_lars_zero_weight_takes_the_raw_gradient():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=1.0)
    w.grad = torch.ones(2, 2)
    opt.step()
    assert torch.equal(w.detach(), -torch.ones(2, 2))  # |w| = 0: trust ratio 1


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 1.0, 0.0, 10, 90) == 0.0
    assert lr_at(5, 1.0, 0.0, 10, 90) == pytest.approx(0.5)
    assert lr_at(10, 1.0, 0.0, 10, 90) == pytest.approx(1.0)
    assert lr_at(50, 1.0, 0.1, 10, 90) == pytest.approx(0.55)  # half-way down the cosine
    assert lr_at(90, 1.0, 0.1, 10, 90) == pytest.approx(0.1)


def test_probe_head_is_maes():
    head = probe_head(500, 40, torch.Generator().manual_seed(0))
    bn, linear = head[0], head[1]
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert [n for n, _ in head.named_parameters()] == ["1.weight", "1.bias"]
    assert linear.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.count_nonzero(linear.bias) == 0
    probe = LinearProbe(name="p", batch_size=512, accum_iter=32, blr=0.1)
    assert probe.effective_batch_size == 16384 and probe.base_lr == pytest.approx(6.4)
    assert LinearProbe(name="p", lr=0.3).base_lr == 0.3


# --------------------------------------------------- protocols on a stand-in encoder


class TokensAreTheInput(torch.nn.Module):
    """``features(batch)`` = the batch's own tokens: the test decides what the encoder says."""

    def features(self, batch):
        return batch["image"]


class TokenData:
    """Picture-like batches: the CLS token encodes the class (a one-hot direction plus
    noise), the patch tokens are pure noise."""

    num_classes = 4

    def __init__(self, num_train=240, num_test=80, dim=16, seed=0):
        g = torch.Generator().manual_seed(seed)

        def split(n):
            y = torch.arange(n) % self.num_classes
            tokens = torch.randn(n, 5, dim, generator=g)
            tokens[torch.arange(n), 0, y] += 4.0
            return [{"image": t, "label": int(c)} for t, c in zip(tokens, y, strict=True)]

        self.train, self.test = split(num_train), split(num_test)

    def eval_dataloaders(self):
        return DataLoader(self.train, batch_size=32), DataLoader(self.test, batch_size=32)


@pytest.mark.parametrize("protocol", ["knn", "linear_probe"])
def test_protocols_read_the_class_from_the_cls_token_only(protocol):
    data, model, cpu = TokenData(), TokensAreTheInput(), torch.device("cpu")
    make = {
        "knn": lambda pooling: KNN(name="knn", pooling=pooling),
        "linear_probe": lambda pooling: LinearProbe(
            # LARS moves |w| by about lr * 0.001 per step: 210 steps on 240 samples need a
            # larger lr than blr 0.1 x 32 / 256 to leave the 0.01-std init behind
            name="linear_probe",
            pooling=pooling,
            epochs=30,
            warmup_epochs=3,
            batch_size=32,
            lr=10.0,
        ),
    }[protocol]
    result, summary = make("auto")(model, cpu, data)
    assert result["top1"] >= 95 and "top5" not in result  # 4 classes: no top-5
    assert result["num_train"] == 240 and result["num_test"] == 80 and result["feature_dim"] == 16
    assert "top-1" in summary
    noise, _ = make("mean")(model, cpu, data)
    assert noise["top1"] < 50  # the patch tokens carry nothing: about chance (25 %)


def test_linear_probe_settings_that_cannot_train_are_clear_errors():
    probe = LinearProbe(name="linear_probe", augment=True, epochs=1)
    with pytest.raises(UserInputError, match="augmented_train_dataloader"):
        probe(TokensAreTheInput(), torch.device("cpu"), TokenData())
    probe = LinearProbe(name="linear_probe", epochs=1, batch_size=64, accum_iter=4)
    with pytest.raises(UserInputError, match="3 batches of 64 per epoch, fewer than eval.accum"):
        probe(TokensAreTheInput(), torch.device("cpu"), TokenData())  # 240 samples
    with pytest.raises(UserInputError, match="eval.batch_size >= 2"):
        LinearProbe(name="linear_probe", batch_size=1)


# ------------------------------------------------------------------------- end to end

TINY_IMAGES = [
    "+experiment=mae",
    *TINY_MAE,
    "data.img_size=32",
    "data.batch_size=16",
    "data.num_train=64",
    "data.num_val=24",
]


@pytest.mark.parametrize(
    "eval_args",
    [
        ["eval=knn"],
        ["eval=knn", "eval.pooling=mean", "eval.k=5"],
        ["eval=linear_probe", "eval.epochs=3", "eval.warmup_epochs=1", "eval.batch_size=16"],
        ["eval=linear_probe_mae", "eval.epochs=2", "eval.batch_size=16", "eval.accum_iter=2"],
    ],
    ids=["knn", "knn-mean", "linear_probe", "linear_probe_mae"],
)
def test_image_evaluations_end_to_end(compose_train, tmp_path, eval_args):
    cfg = compose_train([*TINY_IMAGES, *eval_args], config_name="evaluate")
    result = evaluate(cfg)
    assert json.loads((tmp_path / "run" / "eval.json").read_text()) == result
    assert result["num_train"] == 64 and result["num_test"] == 24
    assert result["num_classes"] == 8 and result["feature_dim"] == 32
    assert 0 <= result["top1"] <= result["top5"] <= 100  # 8 classes: top-5 reported
    if result["eval"] == "linear_probe":
        assert result["augment"] == ("linear_probe_mae" in eval_args[0])
        assert result["effective_batch_size"] == (32 if result["augment"] else 16)


def test_knn_on_point_clouds_end_to_end(compose_train, tmp_path):
    cfg = compose_train([*TINY_POINTS, "eval=knn"], config_name="evaluate")
    result = evaluate(cfg)
    assert result["eval"] == "knn" and result["pooling"] == "auto"
    assert result["feature_dim"] == 64  # max_mean of 32-wide tokens
    assert result["num_train"] == 32 and result["num_test"] == 16
    assert 0 <= result["top1"] <= result["top5"] <= 100  # 14 classes
    cfg = compose_train([*TINY_POINTS, "eval=knn", "eval.pooling=cls"], config_name="evaluate")
    with pytest.raises(UserInputError, match="needs a CLS token"):
        evaluate(cfg)
