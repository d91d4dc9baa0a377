"""Image-text evaluations: masked grounded words (true vs blank picture) and ITM retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maskfm.data.captions import CaptionDataModule
from maskfm.eval.image_text import _fingerprint, mlm_probe, probe_variants, recall_at_k, retrieval
from maskfm.evaluate import evaluate
from maskfm.train import train


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    return CaptionDataModule(
        img_size=32,
        batch_size=8,
        num_train=16,
        num_val=12,
        cache_dir=str(tmp_path_factory.mktemp("captions")),
    )


def test_recall_at_k_by_hand():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.5],  # query 0: right answer ranked 1st
            [0.8, 0.2, 0.9],  # query 1: ranked 3rd
            [0.1, 0.7, 0.6],
        ]
    )  # query 2: ranked 2nd
    relevant = torch.eye(3, dtype=torch.bool)
    r = recall_at_k(scores, relevant, (1, 2, 3))
    assert r == pytest.approx({"R@1": 100 / 3, "R@2": 200 / 3, "R@3": 100.0})
    relevant[1, 0] = True  # a second relevant item ranked 2nd for query 1
    assert recall_at_k(scores, relevant, (2,))["R@2"] == pytest.approx(100.0)


def test_probe_variants_hide_each_grounded_word_or_all_at_once(datamodule):
    batch = next(iter(datamodule.eval_dataloaders()[1]))
    kinds = ("colour", "shape", "count")
    each = probe_variants(batch, kinds, "each")
    expected = sum(1 for spans in batch["spans"] for s in spans if s[2] in kinds)
    assert len(each) == expected > 0
    for i, hidden, [(kind, tokens)] in each:
        assert kind in kinds and torch.equal(hidden, tokens) and hidden.any()
        assert batch["grounded"][i][hidden].all() and (batch["word_ids"][i][hidden] >= 0).all()
    joint = probe_variants(batch, kinds, "all")
    assert len(joint) == sum(1 for spans in batch["spans"] if any(s[2] in kinds for s in spans))
    assert sum(int(h.sum()) for _, h, _ in joint) == sum(int(h.sum()) for _, h, _ in each)
    with pytest.raises(ValueError, match="mode"):
        probe_variants(batch, kinds, "some")


class ImageReader:
    """Knows every caption by its picture: right with the true picture, never with a blank one."""

    def __init__(self, loader):
        self.ids = {}
        for batch in loader:
            for img, ids in zip(batch["image"], batch["input_ids"], strict=True):
                self.ids[_fingerprint(img)] = ids

    def mlm_logits(self, imgs, input_ids, attention_mask, positions):
        vocab = 1000
        logits = torch.zeros(*input_ids.shape, vocab)
        for r, img in enumerate(imgs):
            truth = self.ids.get(_fingerprint(img))
            if truth is not None:
                logits[r, torch.arange(input_ids.shape[1]), truth] = 1.0
        return logits[
            positions
        ]  # blank picture: all-zero logits, argmax token 0 (<s>), always wrong


def test_mlm_probe_counts_words_and_measures_the_gap(datamodule):
    loader = datamodule.eval_dataloaders()[1]
    result = mlm_probe(ImageReader(loader), loader, datamodule.mask_token_id, mode="each")
    assert result["num_samples"] == 12
    words = sum(
        1
        for b in loader
        for spans in b["spans"]
        for s in spans
        if s[2] in ("colour", "shape", "count")
    )
    assert result["num_words"] == words
    assert (
        result["true_image"]["word_accuracy"] == 100.0
        and result["true_image"]["colour_accuracy"] == 100.0
    )
    assert result["blank_image"]["word_accuracy"] == 0.0 and result["gap"] == 100.0
    capped = mlm_probe(ImageReader(loader), loader, datamodule.mask_token_id, max_samples=5)
    assert capped["num_samples"] == 5 and capped["num_words"] < words


class Matcher:
    """Scores a pair by how close the picture's mean is to a number stored for the caption."""

    def __init__(self, loader, reverse=False):
        self.code = {}
        for batch in loader:
            for img, ids in zip(batch["image"], batch["input_ids"], strict=True):
                self.code[tuple(ids.tolist())] = img.mean()
        self.sign = -1.0 if reverse else 1.0

    def encode_image(self, imgs):
        return imgs.mean(dim=(1, 2, 3))[:, None]

    def encode_text(self, ids, mask):
        return torch.stack([self.code[tuple(row.tolist())] for row in ids])[:, None]

    def match_scores(self, image, text, mask):
        return -self.sign * (image - text).abs()[:, 0]


def test_retrieval_ranks_every_pair_by_the_match_score(datamodule):
    loader = datamodule.eval_dataloaders()[1]
    good = retrieval(Matcher(loader), loader, num_pairs=10, ks=(1, 5))
    assert good["num_pairs"] == 10
    assert good["image_to_text"] == {"R@1": 100.0, "R@5": 100.0} == good["text_to_image"]
    assert good["chance"] == {"R@1": 10.0, "R@5": 50.0}
    bad = retrieval(Matcher(loader, reverse=True), loader, num_pairs=10, ks=(1, 5))
    assert bad["image_to_text"]["R@1"] == 0.0 and bad["text_to_image"]["R@5"] < 100.0


TINY_M3AE = [
    "+experiment=m3ae",
    "data.img_size=32",
    "data.num_train=32",
    "data.num_val=16",
    "data.batch_size=8",
    "model.image.patch_size=8",
    "model.image.embed_dim=32",
    "model.image.depth=1",
    "model.image.num_heads=2",
    "model.text.hidden_size=32",
    "model.text.num_layers=1",
    "model.text.num_heads=2",
    "model.text.intermediate_size=64",
    "model.fusion.dim=32",
    "model.fusion.depth=2",
    "model.fusion.num_heads=2",
    "model.mim_layer=1",
    "model.decoder.embed_dim=32",
    "model.decoder.depth=1",
    "model.decoder.num_heads=2",
    "trainer.max_epochs=1",
    "callbacks.reconstructions.every_n_steps=2",
]


def test_train_then_evaluate_m3ae_from_the_configs(compose_train):
    metrics, objects = train(compose_train(TINY_M3AE))
    assert objects["trainer"].global_step == 4
    for key in ("train/mim", "train/mlm", "train/itm", "val/mlm_acc", "val/itm_acc"):
        assert key in metrics, key
    out = Path(objects["trainer"].default_root_dir)
    assert sorted(p.name for p in (out / "reconstructions").glob("*.png"))
    ckpt = f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"
    probe = evaluate(compose_train([*TINY_M3AE, "eval=mlm_probe", ckpt], config_name="evaluate"))
    assert probe["eval"] == "mlm_probe" and probe["num_samples"] == 16 and probe["global_step"] == 4
    assert 0.0 <= probe["true_image"]["word_accuracy"] <= 100.0
    rank = evaluate(
        compose_train(
            [*TINY_M3AE, "eval=retrieval", "eval.num_pairs=6", ckpt], config_name="evaluate"
        )
    )
    assert rank["num_pairs"] == 6 and set(rank["image_to_text"]) == {"R@1", "R@5"}
    assert json.loads((out / "eval.json").read_text()) == json.loads(json.dumps(rank))
