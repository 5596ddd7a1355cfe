"""Augmentation invariants and task-sampling invariants."""

from __future__ import annotations

import numpy as np
import torch

from fewshotseg.data import augment
from fewshotseg.data.tasks import (
    episode_rng,
    fp_k_prefixes,
    reptile_examples,
    sample_classes,
    support_query_split,
)


def square_batch(n=8, size=64):
    masks = torch.zeros(n, size, size)
    masks[:, 20:40, 12:30] = 1
    images = masks[:, None].repeat(1, 3, 1, 1) * 0.8 + 0.1
    return images, masks


def test_image_and_mask_stay_aligned_under_geometric_augmentation(monkeypatch):
    images, masks = square_batch()
    monkeypatch.setattr(augment, "choose_ops", lambda b, rate, g: torch.tensor([[True, True, True, False, False, False]] * b))
    out_images, out_masks = augment.augment_batch(images, masks, 1.0, torch.Generator().manual_seed(0))
    moved = (out_images[:, 0] > 0.5).float()
    assert not torch.equal(out_masks, masks)  # it did move
    disagreement = (moved != out_masks).float().mean().item()
    assert disagreement < 0.01  # only interpolation at the edges may differ
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}


def test_flipping_twice_is_the_identity(monkeypatch):
    images, masks = square_batch()
    images = torch.rand_like(images)
    monkeypatch.setattr(augment, "choose_ops", lambda b, rate, g: torch.tensor([[False, False, True, False, False, False]] * b))
    g = torch.Generator().manual_seed(0)
    once = augment.augment_batch(images, masks, 1.0, g)
    twice = augment.augment_batch(*once, 1.0, g)
    assert torch.equal(twice[0], images) and torch.equal(twice[1], masks)
    assert not torch.equal(once[0], images)


def test_erasing_sets_the_erased_mask_region_to_background(monkeypatch):
    images, masks = torch.rand(16, 3, 64, 64), torch.ones(16, 64, 64)
    monkeypatch.setattr(augment, "choose_ops", lambda b, rate, g: torch.tensor([[False] * 5 + [True]] * b))
    out_images, out_masks = augment.augment_batch(images, masks, 1.0, torch.Generator().manual_seed(1))
    erased = out_masks == 0
    area = erased.flatten(1).float().mean(1)
    assert ((area >= 0.015) & (area <= 0.11)).all()  # 2-10 % of the image, up to rounding
    constant = out_images.permute(0, 2, 3, 1)[erased]  # every erased pixel holds the example's one fill value
    assert constant.std(dim=1).max() < 1e-6
    assert torch.equal(out_images[~erased[:, None].expand_as(out_images)], images[~erased[:, None].expand_as(images)])


def test_augmentation_rate_is_the_probability_an_example_is_augmented():
    g = torch.Generator().manual_seed(0)
    ops = augment.choose_ops(20000, 0.5, g)
    augmented = ops.any(dim=1).float().mean().item()
    assert abs(augmented - 0.5) < 0.02
    counts = ops[ops.any(dim=1)].sum(dim=1)
    assert set(counts.unique().tolist()) == {1, 2, 3, 4, 5, 6}  # n ~ U{1..6}
    assert abs(counts.float().mean().item() - 3.5) < 0.05
    assert augment.choose_ops(100, 0.0, g).sum() == 0


def test_zero_rate_returns_the_batch_unchanged():
    images, masks = square_batch()
    out = augment.augment_batch(images, masks, 0.0, torch.Generator())
    assert out[0] is images and out[1] is masks


def test_same_seed_same_tasks():
    names = [f"c{i}" for i in range(50)]
    a = sample_classes(episode_rng(3, 0, 7), names, 5), support_query_split(episode_rng(3, 1, 7), 10, 5)
    b = sample_classes(episode_rng(3, 0, 7), names, 5), support_query_split(episode_rng(3, 1, 7), 10, 5)
    assert a[0] == b[0]
    assert all(np.array_equal(x, y) for x, y in zip(a[1], b[1]))
    c = sample_classes(episode_rng(3, 0, 8), names, 5)
    assert c != a[0]


def test_support_and_query_are_disjoint_and_classes_distinct():
    rng = np.random.default_rng(0)
    for _ in range(100):
        support, query, rest = support_query_split(rng, 10, 5)
        assert len(set(support) | set(query) | set(rest)) == 10 and len(query) == 5
        assert len(set(reptile_examples(rng, 10, 5).tolist())) == 5
        assert len(set(sample_classes(rng, list("abcdefgh"), 5))) == 5


def test_fp_k_prefixes_are_nested_and_share_one_test_set():
    prefixes, test = fp_k_prefixes(np.random.default_rng(0), 440, [1, 5, 10, 50, 100, 200, 400])
    assert len(test) == 20
    ks = sorted(prefixes)
    for small, large in zip(ks, ks[1:]):
        assert np.array_equal(prefixes[large][:small], prefixes[small])
    assert set(prefixes[400].tolist()).isdisjoint(test.tolist())
