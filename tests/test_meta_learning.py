"""Invariants of the update routine and the meta-learners, on a tiny model and the tiny built-in benchmark."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fewshotseg.data.tasks import TaskTensors, episode_rng, fomaml_split, inner_batches
from fewshotseg.evaluation.protocols import paper_episodes, run_episode
from fewshotseg.meta_learning.meta_update import task_difference
from fewshotseg.meta_learning.update_routine import DivergedError, Learner, UpdateParams
from fewshotseg.meta_learning.weights import parameters, state_tensors
from fewshotseg.models.efficientlab import build_model
from fewshotseg.models.losses import l2_parameters, l2_penalty, segmentation_loss


@pytest.fixture()
def model(tiny_config):
    torch.manual_seed(0)
    return build_model(tiny_config)


@pytest.fixture()
def task(tiny_dataset):
    return TaskTensors.from_dataset(tiny_dataset, tiny_dataset.names[0])


def test_update_routine_leaves_the_initialization_untouched(model, task):
    before = [t.clone() for t in state_tensors(model)]
    learner = Learner(copy.deepcopy(model))
    learner.adapt(model, task, UpdateParams(lr=0.1, steps=3), episode_rng(0, 1))
    after_adapt = state_tensors(learner.model)
    assert any(not torch.equal(a, b) for a, b in zip(after_adapt, before))  # the working copy did change
    for a, b in zip(state_tensors(model), before):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_update_routine_beats_the_all_foreground_floor_on_easy_tasks(model, tiny_dataset):
    """Adapted on 7 images of a built-in class (one coloured shape among distractors), a random network predicts the
    5 held-out images well above the floor of predicting everything foreground; a wrong sign in U's step fails."""
    from fewshotseg.evaluation.metrics import binary_iou

    params = UpdateParams(lr=0.1, steps=30, dropout=0.0, aug_rate=0.0, bn_policy="transductive")
    learner = Learner(copy.deepcopy(model))
    adapted, floor = [], []
    for name in tiny_dataset.names[:4]:
        task = TaskTensors.from_dataset(tiny_dataset, name)
        learner.adapt(model, task.take(range(7)), params, episode_rng(0, 1))
        held_out = task.take(range(7, 12))
        adapted.append(binary_iou(learner.predict(held_out.images) > 0.5, held_out.masks).mean().item())
        floor.append(binary_iou(torch.ones_like(held_out.masks), held_out.masks).mean().item())
    assert np.mean(adapted) > 2 * np.mean(floor), (adapted, floor)  # measured: 0.40 against 0.08


def test_same_seed_same_adaptation(model, task):
    learner = Learner(copy.deepcopy(model))
    params = UpdateParams(lr=0.05, steps=2, aug_rate=1.0)
    learner.adapt(model, task, params, episode_rng(7, 1))
    first = [t.clone() for t in state_tensors(learner.model)]
    learner.adapt(model, task, params, episode_rng(7, 1))
    for a, b in zip(state_tensors(learner.model), first):
        assert torch.equal(a, b)


def test_reptile_with_step_one_and_one_task_equals_the_adapted_weights(model, task):
    learner = Learner(copy.deepcopy(model))
    params = UpdateParams(lr=0.05, steps=3)
    delta = task_difference("reptile", learner, model, task, params, episode_rng(0, 2), train_shots=5, val_shots=5)
    theta = parameters(model)
    for t, d in zip(theta, delta):
        t.grad = -d  # the pseudo-gradient meta_train hands to the outer optimizer
    torch.optim.SGD(theta, lr=1.0).step()
    for t, w in zip(theta, parameters(learner.model)):
        torch.testing.assert_close(t, w, rtol=0, atol=1e-6)


def test_fomaml_update_is_the_last_step_gradient_on_dval_at_the_pre_final_weights(model, task):
    learner = Learner(copy.deepcopy(model))
    params = UpdateParams(lr=0.05, steps=3, dropout=0.0, l2=5e-4)
    calls = []
    real_step = learner.step

    def spy(images, masks, lr):
        calls.append((images.clone(), masks.clone(), lr, [p.detach().clone() for p in parameters(learner.model)]))
        return real_step(images, masks, lr)

    learner.step = spy
    delta = task_difference("fomaml", learner, model, task, params, episode_rng(0, 3), train_shots=10, val_shots=5)
    assert len(calls) == 3
    images, masks, lr, before = calls[-1]
    assert len(images) == 5  # all of D^val as one batch
    probe = copy.deepcopy(learner.model)
    for p, b in zip(parameters(probe), before):
        p.data.copy_(b)
    probe.train()
    loss = segmentation_loss(probe(images), masks) + params.l2 * l2_penalty(l2_parameters(probe))
    grads = torch.autograd.grad(loss, list(probe.parameters()))
    for d, g in zip(delta, grads):
        torch.testing.assert_close(d, -lr * g, rtol=1e-4, atol=1e-6)  # float32 noise of two backward passes


def test_fomaml_star_draws_with_replacement_and_fomaml_is_disjoint():
    rng = np.random.default_rng(0)
    no_duplicates, overlaps = 0, 0
    trials = 4000
    for _ in range(trials):
        tr, val = fomaml_split(rng, 10, 5, 5, replacement=True)
        no_duplicates += len(set(tr.tolist())) == 5
        overlaps += bool(set(tr.tolist()) & set(val.tolist()))
    expected = 10 * 9 * 8 * 7 * 6 / 10**5  # P(5 draws from 10 with replacement are all distinct) = 0.3024
    assert abs(no_duplicates / trials - expected) < 0.03
    assert overlaps / trials > 0.9  # P(overlap) = 1 - P(disjoint) ~ 0.97
    for _ in range(200):
        tr, val = fomaml_split(rng, 10, 5, 5, replacement=False)
        assert len(set(tr.tolist()) | set(val.tolist())) == 10


def test_inner_batches_cycle_across_epochs():
    batches = inner_batches(np.random.default_rng(0), np.arange(5), 8, 3)
    assert all(len(b) == 8 for b in batches)
    assert set(batches[0].tolist()) == set(range(5))  # all 5, then 3 from the next shuffle
    stream = np.concatenate(batches)
    for epoch in range(4):
        assert sorted(stream[5 * epoch : 5 * epoch + 5].tolist()) == list(range(5))


def test_no_batchnorm_leak_between_tasks(model, tiny_dataset):
    names = tiny_dataset.names[:2]
    episodes = paper_episodes(tiny_dataset, names, 5, splits=1, seed=0)
    params = UpdateParams(lr=0.1, steps=4)
    learner = Learner(copy.deepcopy(model))
    run_episode(learner, model, tiny_dataset, episodes[0], params)
    b_after_a = run_episode(learner, model, tiny_dataset, episodes[1], params)
    fresh = Learner(copy.deepcopy(model))
    b_alone = run_episode(fresh, model, tiny_dataset, episodes[1], params)
    assert b_after_a == b_alone


def test_weight_decay_equals_the_l2_term_in_the_loss(model, task):
    learner = Learner(copy.deepcopy(model))
    params = UpdateParams(lr=0.1, steps=1, dropout=0.0, aug_rate=0.0, l2=0.01)
    learner.start(model, params)
    x, y = task.images[:4], task.masks[:4]
    learner.step(x, y, 0.1)
    explicit = copy.deepcopy(model).train()
    explicit.set_dropout(0.0)
    loss = segmentation_loss(explicit(x), y) + 0.01 * l2_penalty(l2_parameters(explicit))
    loss.backward()
    with torch.no_grad():
        for p in explicit.parameters():
            p -= 0.1 * p.grad
    for a, b in zip(parameters(learner.model), parameters(explicit)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_batchnorm_policies(model, task):
    learner = Learner(copy.deepcopy(model))
    stats = lambda m: [b.clone() for n, b in m.named_buffers() if "running_mean" in n]  # noqa: E731
    learner.adapt(model, task, UpdateParams(steps=2, bn_policy="frozen"), episode_rng(0, 4))
    assert all(torch.equal(a, b) for a, b in zip(stats(learner.model), stats(model)))
    learner.adapt(model, task, UpdateParams(steps=2, bn_policy="paper"), episode_rng(0, 4))
    assert any(not torch.equal(a, b) for a, b in zip(stats(learner.model), stats(model)))
    # transductive prediction depends on which images are predicted together; paper's does not
    paper_one = learner.predict(task.images[:1])
    paper_all = learner.predict(task.images[:4])[:1]
    torch.testing.assert_close(paper_one, paper_all)
    learner.params = learner.params.replace(bn_policy="transductive")
    assert not torch.allclose(learner.predict(task.images[:1]), learner.predict(task.images[:4])[:1])


def test_a_diverging_learning_rate_raises(model, task):
    learner = Learner(copy.deepcopy(model))
    with pytest.raises(DivergedError):
        learner.adapt(model, task, UpdateParams(lr=1e12, steps=20, l2=0.0), episode_rng(0, 5))


def test_early_stopping_reports_the_best_step(model, task):
    learner = Learner(copy.deepcopy(model))
    from fewshotseg.evaluation.early_stopping import EarlyStopping, early_stopping

    result = early_stopping(learner, model, task.take(range(6)), task.take(range(6, 12)), UpdateParams(lr=0.1),
                            EarlyStopping(patience=3, max_steps=12), episode_rng(0, 6))
    assert 1 <= result.best_step <= len(result.scores) <= 12
    assert result.best_score == max(result.scores)
    assert result.scores.index(result.best_score) + 1 == result.best_step  # the first best step
    if len(result.scores) < 12:
        assert len(result.scores) - result.best_step == 3  # stopped after `patience` steps without improvement
