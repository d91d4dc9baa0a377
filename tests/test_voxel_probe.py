import pytest
import torch

from maskfm.eval.voxel_probe import segmentation_scores, train_linear_probe, voxel_labels


def test_voxel_labels_take_the_majority_point_label():
    labels = torch.tensor([0, 1, 1, 2, 3, 3, 3, 0])
    voxel = torch.tensor([0, 0, 0, 1, 2, 2, -1, 2])
    assert voxel_labels(labels, voxel, 3, 4).tolist() == [1, 2, 3]


def test_segmentation_scores_by_hand():
    pred = torch.tensor([0, 0, 1, 1, 2])
    target = torch.tensor([0, 1, 1, 1, 3])
    s = segmentation_scores(pred, target, 4, ["ground", "car", "building", "pole"])
    assert s["accuracy"] == pytest.approx(60.0)
    assert s["iou"] == pytest.approx({"ground": 50.0, "car": 200 / 3, "building": 0.0, "pole": 0.0})
    assert abs(s["miou"] - (50 + 200 / 3) / 4) < 1e-9


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    predict = train_linear_probe(x, y, 4, epochs=300, lr=0.05)
    assert (predict(x) == y).float().mean() > 0.95
