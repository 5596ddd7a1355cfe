"""Loss and metric edge cases, and the reductions on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from fewshotseg.evaluation import metrics
from fewshotseg.evaluation.intervals import (
    bootstrap_over_classes,
    ci95_t,
    class_bootstrap,
    class_bootstrap_ci,
    interval_by_class,
    t_interval,
    t_quantile,
)
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


def test_t_interval_on_a_hand_computed_example_and_against_scipy():
    mean, half = ci95_t([0.2, 0.4, 0.6, 0.8])
    s = math.sqrt(((0.3**2) * 2 + (0.1**2) * 2) / 3)  # sample standard deviation (ddof 1)
    assert mean == pytest.approx(0.5)
    assert half == pytest.approx(3.182446305284263 * s / 2)  # t(0.975, 3 degrees of freedom)
    rng = np.random.default_rng(3)
    for n in (2, 3, 5, 12, 72, 480):
        values = rng.normal(0.4, 0.2, size=n)
        low, high = stats.t.interval(0.95, n - 1, loc=values.mean(), scale=stats.sem(values))
        est = t_interval(values)
        assert (est.mean, est.low, est.high, est.n, est.interval) == pytest.approx(
            (values.mean(), low, high, n, "t"))
    assert t_quantile(1000) == pytest.approx(1.96, abs=0.005)  # the normal quantile is the large-n limit
    one = t_interval([0.3])
    assert one.mean == 0.3 and math.isnan(one.low) and math.isnan(one.high)  # one value: no interval
    with pytest.raises(ValueError, match="no values"):
        t_interval([])


def test_t_interval_covers_the_mean_of_small_samples_where_1_96_sigma_does_not():
    rng = np.random.default_rng(0)
    samples = rng.normal(0.5, 0.1, size=(4000, 5))  # 4000 experiments of 5 task splits each
    covered_t = np.mean([abs(ci95_t(v)[0] - 0.5) <= ci95_t(v)[1] for v in samples])
    half_normal = 1.96 * samples.std(axis=1) / math.sqrt(5)  # the reference's population-sigma interval
    covered_normal = np.mean(np.abs(samples.mean(axis=1) - 0.5) <= half_normal)
    assert 0.94 <= covered_t <= 0.96
    assert covered_normal < 0.87


def test_class_bootstrap_resamples_classes_deterministically():
    class_means = np.array([0.1, 0.25, 0.3, 0.45, 0.5, 0.6, 0.8, 0.9])
    values = np.repeat(class_means, 2) + np.tile([-0.05, 0.05], 8)  # 8 classes x 2 splits
    classes = np.repeat(list("abcdefgh"), 2).tolist()
    mean, low, high = class_bootstrap_ci(values, classes, seed=4, resamples=2000)
    assert mean == pytest.approx(class_means.mean()) and low < mean < high
    assert class_bootstrap_ci(values, classes, seed=4, resamples=2000) == (mean, low, high)
    assert class_bootstrap_ci(values, classes, seed=5, resamples=2000) != (mean, low, high)
    # the bounds are the 2.5th and 97.5th percentiles of the means of the values of resampled classes (equal-sized
    # classes: the mean of the drawn classes' means)
    drawn = np.random.default_rng(4).integers(0, 8, size=(2000, 8))
    assert (low, high) == pytest.approx(tuple(np.percentile(class_means[drawn].mean(axis=1), [2.5, 97.5])))
    # wider than the t interval over the 16 values as if independent: the within-class spread is small
    assert high - low > 2 * t_interval(values).half_width
    est = class_bootstrap(values, classes, seed=4)
    assert est.as_dict() == {"mean": mean, "low": low, "high": high, "ci95": (high - low) / 2, "n": 16,
                             "interval": "class bootstrap", "classes": 8}
    assert all(math.isnan(x) for x in class_bootstrap_ci([0.1, 0.3], ["a", "a"])[1:])  # one class: no interval
    with pytest.raises(ValueError, match="2 values but 3 class labels"):
        class_bootstrap([0.1, 0.2], ["a", "b", "c"])


def test_class_bootstrap_covers_clustered_means_where_the_t_interval_over_splits_does_not():
    # 40 classes x 4 splits: a class effect (sd 0.15) shared by its splits, split noise sd 0.05; the true mean 0.5
    rng = np.random.default_rng(1)
    classes = np.repeat(np.arange(40), 4)
    covered_bootstrap = covered_t = 0
    experiments = 300
    for e in range(experiments):
        values = 0.5 + rng.normal(0, 0.15, 40)[classes] + rng.normal(0, 0.05, 160)
        _, low, high = class_bootstrap_ci(values, classes, seed=e, resamples=1000)
        covered_bootstrap += low <= 0.5 <= high
        est = t_interval(values)  # treats the 160 splits as independent
        covered_t += est.low <= 0.5 <= est.high
    assert covered_bootstrap / experiments >= 0.92
    assert covered_t / experiments < 0.8


def test_interval_by_class_uses_t_for_distinct_classes_and_the_bootstrap_for_shared_ones():
    values = [0.2, 0.4, 0.6, 0.8]
    assert interval_by_class(values, ["a", "b", "c", "d"]) == t_interval(values)
    shared = interval_by_class(values, ["a", "a", "b", "b"], seed=2)
    assert shared == class_bootstrap(values, ["a", "a", "b", "b"], seed=2)
    assert shared.interval == "class bootstrap" and shared.classes == 2 and shared.n == 4


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
