"""Loss and metric edge cases, and the reductions on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fewshotseg.evaluation import metrics
from fewshotseg.evaluation.intervals import bootstrap_over_classes, paper_ci95
from fewshotseg.models.losses import segmentation_loss, soft_iou


def logits_for(probs_fg: torch.Tensor) -> torch.Tensor:
    p = probs_fg.clamp(1e-6, 1 - 1e-6)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


def test_perfect_prediction_has_near_zero_loss_and_iou_one():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    logits = torch.where(target.bool(), 20.0, -20.0)[:, None].expand(-1, 2, -1, -1).clone()
    logits[:, 0] = 0
    assert segmentation_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert metrics.binary_iou(target, target).tolist() == [1.0, 1.0]


def test_empty_mask_and_empty_prediction():
    empty = torch.zeros(1, 8, 8, dtype=torch.long)
    assert metrics.binary_iou(empty, empty).item() == 1.0  # the paper's code: (0 + eps) / (0 + eps)
    some = empty.clone()
    some[0, 0, 0] = 1
    assert metrics.binary_iou(some, empty).item() == 0.0
    # soft IoU of an empty target is eps / (sum p + eps): 1 only for an exactly empty prediction, and the
    # -ln(dice) term punishes any leftover foreground probability on a background-only image
    assert soft_iou(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8)).item() == pytest.approx(1.0)
    probs = torch.full((1, 8, 8), 1e-6)
    assert soft_iou(probs, torch.zeros(1, 8, 8)).item() == pytest.approx(1e-7 / (64e-6 + 1e-7), rel=1e-4)


def test_all_foreground_mask():
    full = torch.ones(1, 4, 4, dtype=torch.long)
    assert metrics.binary_iou(full, full).item() == 1.0
    half = full.clone()
    half[0, :2] = 0
    assert metrics.binary_iou(half, full).item() == 0.5
    # probability 0.5 everywhere: CE = ln 2, soft IoU = 8/16, dice = 2/3
    loss = segmentation_loss(torch.zeros(1, 2, 4, 4), full)
    assert loss.item() == pytest.approx(math.log(2) - math.log(2 * 0.5 / 1.5), rel=1e-5)


def test_soft_iou_is_a_per_image_ratio_of_sums():
    probs = torch.tensor([[[0.5, 1.0], [0.0, 0.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    # I = 1.5, U = 1.5 + 3 - 1.5 = 3
    assert soft_iou(probs, target).item() == pytest.approx(0.5, rel=1e-6)


def test_paper_ci95_on_a_hand_computed_example():
    est = paper_ci95([0.2, 0.4, 0.6, 0.8])
    sigma = math.sqrt(((0.3**2) * 2 + (0.1**2) * 2) / 4)  # population sigma = sqrt(0.05)
    assert est.mean == pytest.approx(0.5)
    assert est.half_width == pytest.approx(1.96 * sigma / 2)


def rows(cls, fg_i, fg_u, split=0):
    return {"class": cls, "split": split, "fg_i": fg_i, "fg_u": fg_u, "bg_i": 100 - fg_u, "bg_u": 100 - fg_i}


def test_pooled_and_per_episode_miou_differ_as_they_should():
    # class a: a large object found well (90/100) and a tiny one missed (0/10)
    # class b: one medium object half found (25/50)
    data = [rows("a", 90, 100), rows("a", 0, 10), rows("b", 25, 50)]
    per_episode = np.mean([0.9, 0.0, 0.5])
    pooled = np.mean([90 / 110, 25 / 50])  # class a pools its counts: the missed tiny object barely matters
    assert metrics.per_episode_miou(data) == pytest.approx(per_episode)
    assert metrics.hsnet_miou(data) == pytest.approx(pooled)
    assert metrics.hsnet_miou(data) > metrics.per_episode_miou(data)
    fg = (90 + 0 + 25) / (100 + 10 + 50)
    bg = ((100 - 100) + (100 - 10) + (100 - 50)) / ((100 - 90) + (100 - 0) + (100 - 25))  # bg_i / bg_u of the rows
    assert metrics.fb_iou(data) == pytest.approx((fg + bg) / 2)


def test_split_scores_average_queries_within_a_split():
    data = [rows("a", 1, 2, split=0), rows("a", 1, 1, split=0), rows("a", 0, 1, split=1)]
    assert metrics.split_scores(data) == {("a", 0): 0.75, ("a", 1): 0.0}


def test_bootstrap_over_classes_brackets_the_pooled_estimate():
    by_class = {c: [rows(c, i, 10)] for c, i in zip("abcdefgh", range(1, 9))}
    est = bootstrap_over_classes(by_class, metrics.hsnet_miou, resamples=500, seed=1)
    assert est.low <= est.mean <= est.high
    assert est.mean == pytest.approx(np.mean(np.arange(1, 9) / 10))
    assert 0 < est.high - est.low < 0.5
    again = bootstrap_over_classes(by_class, metrics.hsnet_miou, resamples=500, seed=1)
    assert (again.low, again.high) == (est.low, est.high)


def test_episode_counts_include_background():
    pred = torch.tensor([[[1, 1], [0, 0]]]).bool()
    target = torch.tensor([[[1, 0], [0, 0]]]).bool()
    assert metrics.episode_counts(pred, target) == [{"fg_i": 1, "fg_u": 2, "bg_i": 2, "bg_u": 3}]


def test_multiclass_soft_iou_equals_the_one_hot_ratio_of_sums():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 5, 6)
    target = torch.randint(0, 7, (3, 5, 6))
    probs = logits.softmax(1)
    onehot = torch.nn.functional.one_hot(target, 7).permute(0, 3, 1, 2).float()
    expected = torch.nn.functional.cross_entropy(logits, target) - torch.log(
        2 * soft_iou(probs, onehot).mean() / (soft_iou(probs, onehot).mean() + 1))
    torch.testing.assert_close(segmentation_loss(logits, target), expected)
