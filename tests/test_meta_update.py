"""The outer meta-update and the update routine's options checked against computations written out by hand.

The segmenter here is a 1x1 convolution (any nn.Module works with the library), the tasks are random images, and
U takes full-batch steps without augmentation, so each inner step is theta - lr * grad L(theta) on all of a task's
images and every expected weight below follows from autograd on plain tensors: a flipped sign of the meta-update, a
dropped epsilon decay, a wrong Adam step or a wrong BN statistics rate changes the numbers.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshotseg.data.tasks import TaskTensors, fomaml_split
from fewshotseg.meta_learning.meta_learner import MetaLearner, meta_step_size, statistics_rate
from fewshotseg.meta_learning.update_routine import Learner, UpdateParams
from fewshotseg.models.losses import segmentation_loss

N = 4  # images per task
FULL_BATCH = UpdateParams(lr=0.3, steps=1, batch_size=N, dropout=0.0, aug_rate=0.0, l2=0.0)


def conv_segmenter(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Conv2d(3, 2, 1)


def random_task(seed: int, n: int = N, size: int = 6) -> TaskTensors:
    g = torch.Generator().manual_seed(seed)
    return TaskTensors(torch.rand(n, 3, size, size, generator=g), torch.randint(0, 2, (n, size, size), generator=g))


def grad_at(weight: torch.Tensor, bias: torch.Tensor, images: torch.Tensor, masks: torch.Tensor) -> list[torch.Tensor]:
    """d L / d (weight, bias) of the EfficientLab loss for the 1x1 convolution, by autograd on plain tensors."""
    w, b = weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    loss = segmentation_loss(F.conv2d(images, w, b), masks)
    return list(torch.autograd.grad(loss, [w, b]))


def inner_step(theta: list[torch.Tensor], task: TaskTensors, lr: float) -> list[torch.Tensor]:
    """One full-batch SGD step of U on all the task's images (their order does not change the loss)."""
    return [t - lr * g for t, g in zip(theta, grad_at(*theta, task.images, task.masks), strict=True)]


def reptile_delta(theta: list[torch.Tensor], task: TaskTensors) -> list[torch.Tensor]:
    return [a - t for a, t in zip(inner_step(theta, task, FULL_BATCH.lr), theta, strict=True)]


def fomaml_delta(theta, task, seed: int, *, replacement: bool, pool: int = N, val: int = 2) -> list[torch.Tensor]:
    """One step (K = 1): no D^tr steps, then the step on D^val, whose images the task's generator picks."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(task))[:pool]
    _, val_index = fomaml_split(rng, pool, pool - val, val, replacement=replacement)
    d_val = task.take(chosen[val_index])
    return [a - t for a, t in zip(inner_step(theta, d_val, FULL_BATCH.lr), theta, strict=True)]


def mean(deltas: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack(parts).mean(0) for parts in zip(*deltas, strict=True)]


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def rngs(seeds: list[int]) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in seeds]


TASKS = [random_task(1), random_task(2), random_task(3)]
SEEDS = [11, 12, 13]


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml", "fomaml-star"])
def test_sgd_meta_update_moves_theta_by_epsilon_times_the_mean_difference(algorithm):
    model = conv_segmenter()
    theta = weights(model)
    meta = MetaLearner(model, algorithm, FULL_BATCH, meta_optimizer="sgd", meta_step=0.5, train_shots=N, val_shots=2)
    meta.meta_step(TASKS, rngs(SEEDS))
    if algorithm == "reptile":
        deltas = [reptile_delta(theta, t) for t in TASKS]
    else:
        deltas = [fomaml_delta(theta, t, s, replacement=algorithm == "fomaml-star") for t, s in zip(TASKS, SEEDS)]
    expected = [t + 0.5 * d for t, d in zip(theta, mean(deltas), strict=True)]  # theta + epsilon * mean delta
    for got, want, before in zip(weights(model), expected, theta, strict=True):
        assert not torch.allclose(got, before)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_fomaml_star_and_fomaml_differ_only_by_how_dval_is_drawn():
    theta = weights(conv_segmenter())
    disjoint = fomaml_delta(theta, TASKS[0], 5, replacement=False)
    with_replacement = fomaml_delta(theta, TASKS[0], 5, replacement=True)
    assert not torch.allclose(disjoint[0], with_replacement[0])  # the hand computation tells the two apart


def test_sgd_epsilon_decays_linearly_over_the_iterations():
    model = conv_segmenter()
    iterations, start, final = 3, 0.6, 0.06
    meta = MetaLearner(model, "reptile", FULL_BATCH, meta_optimizer="sgd", meta_step=start, meta_step_final=final,
                       iterations=iterations, train_shots=N)
    theta = weights(model)
    for i in range(iterations):
        epsilon = (1 - i / iterations) * start + i / iterations * final  # 0.6, 0.42, 0.24
        assert meta.step_size() == pytest.approx(epsilon)
        meta.meta_step(TASKS[:2], rngs(SEEDS[:2]))
        theta = [t + epsilon * d for t, d in zip(theta, mean([reptile_delta(theta, t) for t in TASKS[:2]]), strict=True)]
        for got, want in zip(weights(model), theta, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert meta_step_size(0, None, start, final) == start  # no schedule without a number of iterations


def test_adam_meta_update_is_adams_step_on_minus_the_mean_difference():
    model = conv_segmenter()
    iterations, start, final = 2, 0.01, 0.002
    meta = MetaLearner(model, "reptile", FULL_BATCH, meta_optimizer="adam", meta_step=start, meta_step_final=final,
                       iterations=iterations, train_shots=N)
    theta = weights(model)
    beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults
    m = [torch.zeros_like(t) for t in theta]
    v = [torch.zeros_like(t) for t in theta]
    for i in range(iterations):
        epsilon = (1 - i / iterations) * start + i / iterations * final
        meta.meta_step(TASKS, rngs(SEEDS))
        g = [-d for d in mean([reptile_delta(theta, t) for t in TASKS])]  # the pseudo-gradient
        m = [beta1 * a + (1 - beta1) * b for a, b in zip(m, g, strict=True)]
        v = [beta2 * a + (1 - beta2) * b * b for a, b in zip(v, g, strict=True)]
        m_hat = [a / (1 - beta1 ** (i + 1)) for a in m]
        v_hat = [a / (1 - beta2 ** (i + 1)) for a in v]
        theta = [t - epsilon * a / (b.sqrt() + eps) for t, a, b in zip(theta, m_hat, v_hat, strict=True)]
        for got, want in zip(weights(model), theta, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_bn_statistics_move_toward_the_tasks_adapted_statistics_at_the_statistics_rate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.1), nn.Conv2d(4, 2, 1))
    mean0, var0 = model[1].running_mean.clone(), model[1].running_var.clone()
    conv = copy.deepcopy(model[0])
    meta = MetaLearner(model, "reptile", FULL_BATCH, meta_step=0.5, train_shots=N, bn_momentum=0.1)
    meta.meta_step(TASKS, rngs(SEEDS))
    adapted_means, adapted_vars = [], []
    with torch.no_grad():
        for task in TASKS:  # one train-mode step: the running statistics take one EMA step toward the batch's
            h = conv(task.images)
            adapted_means.append(0.9 * mean0 + 0.1 * h.mean(dim=(0, 2, 3)))
            adapted_vars.append(0.9 * var0 + 0.1 * h.var(dim=(0, 2, 3), unbiased=True))
    rate = (1 - 0.9 ** len(TASKS)) / (1 - 0.9)  # as far as one EMA through all 1 x 3 inner steps would move
    torch.testing.assert_close(model[1].running_mean, mean0 + rate * (torch.stack(adapted_means).mean(0) - mean0))
    torch.testing.assert_close(model[1].running_var, var0 + rate * (torch.stack(adapted_vars).mean(0) - var0))


def test_statistics_rate_equals_one_ema_through_every_inner_step_toward_a_fixed_target():
    m, steps, tasks, s0, target = 0.1, 5, 4, 2.0, -1.0
    per_task = target + (1 - m) ** steps * (s0 - target)  # each task's statistics after its K steps
    one_ema = target + (1 - m) ** (steps * tasks) * (s0 - target)  # the reference's EMA through all K*M steps
    assert s0 + statistics_rate(m, steps, tasks) * (per_task - s0) == pytest.approx(one_ema)
    assert statistics_rate(0.0, steps, tasks) == 0.0


def test_meta_step_checks_its_inputs():
    meta = MetaLearner(conv_segmenter(), "reptile", FULL_BATCH, train_shots=N)
    with pytest.raises(ValueError, match="at least one task"):
        meta.meta_step([])
    with pytest.raises(ValueError, match="2 tasks but 1"):
        meta.meta_step(TASKS[:2], rngs(SEEDS[:1]))
    with pytest.raises(ValueError, match="unknown meta optimizer"):
        MetaLearner(conv_segmenter(), "reptile", meta_optimizer="rmsprop")


# --- the update routine's options ----------------------------------------------------------------------------


def test_inner_adam_takes_adams_first_step_and_forgets_its_moments_between_tasks():
    model = conv_segmenter()
    theta = weights(model)
    learner = Learner(copy.deepcopy(model))
    params = FULL_BATCH.replace(optimizer="adam", lr=0.01)
    for _ in range(2):  # the second task must start from fresh moments, so it repeats the first exactly
        learner.adapt(model, TASKS[0], params, np.random.default_rng(0))
        g = grad_at(*theta, TASKS[0].images, TASKS[0].masks)
        expected = [t - 0.01 * a / (a.abs() + 1e-8) for t, a in zip(theta, g, strict=True)]  # m_hat/sqrt(v_hat)
        for got, want in zip(weights(learner.model), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_step_lr_schedule_halves_the_inner_learning_rate_every_decay_every_steps():
    model = conv_segmenter()
    params = FULL_BATCH.replace(steps=4, lr_schedule="step", decay_rate=0.5, decay_every=2)
    learner = Learner(copy.deepcopy(model))
    learner.adapt(model, TASKS[0], params, np.random.default_rng(0))
    theta = weights(model)
    for lr in (0.3, 0.3, 0.15, 0.15):
        theta = inner_step(theta, TASKS[0], lr)
    for got, want in zip(weights(learner.model), theta, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_the_loss_hook_is_what_u_minimises():
    model = conv_segmenter()
    theta = weights(model)

    def foreground_mse(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return ((logits[:, 1] - masks.float()) ** 2).mean()

    learner = Learner(copy.deepcopy(model), loss=foreground_mse)
    learner.adapt(model, TASKS[0], FULL_BATCH, np.random.default_rng(0))
    w, b = (t.clone().requires_grad_() for t in theta)
    g = torch.autograd.grad(foreground_mse(F.conv2d(TASKS[0].images, w, b), TASKS[0].masks), [w, b])
    for got, t, gi in zip(weights(learner.model), theta, g, strict=True):
        torch.testing.assert_close(got, t - FULL_BATCH.lr * gi, rtol=1e-5, atol=1e-7)


def test_adapting_leaves_the_callers_global_rng_untouched():
    model = conv_segmenter()
    learner = Learner(copy.deepcopy(model))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    learner.adapt(model, TASKS[0], FULL_BATCH.replace(steps=3, dropout=0.5), np.random.default_rng(0))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_drop_path_rate_makes_training_forward_passes_stochastic(tiny_config, rate):
    from dataclasses import replace

    from fewshotseg.models.efficientlab import build_model

    model = build_model(replace(tiny_config, drop_path_rate=rate, dropout=0.0))
    drop_probs = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert (max(drop_probs, default=0.0) > 0) == (rate > 0)  # timm's per-block linear ramp up to `rate`
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.train()
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outs.append(model(x))
    assert torch.equal(outs[0], outs[1]) == (rate == 0.0)
    model.eval()
    assert torch.equal(model(x), model(x))
