"""Reptile, FOMAML and FOMAML*: each forms one difference per task; the meta-update is an ordinary optimizer step.

    Reptile:   delta_k = theta_k - theta              (K steps of U on D, `train_shots` examples; paper eq. 10)
    FOMAML:    delta_k = theta_K - theta_{K-1}         (K-1 steps on D^tr, then the last step on D^val; eq. 11)
    FOMAML*:   FOMAML with D^tr and D^val drawn with replacement from one pool (paper §5; REFERENCE §3.5)
    R2-D2:     delta_k = -lr * grad_theta L(D^val; ridge head fit in closed form on D^tr's features)
               (Bertinetto et al. 2019): the inner loop is the linear probe itself, solved exactly and
               differentiably on the support pixels' features, so the encoder and decoder learn features a linear
               head adapts well on; the gradient is exact (second order through the solve), not first-order

The pseudo-gradient handed to the outer optimizer is g = -mean_k delta_k, so plain SGD with learning rate epsilon
gives theta <- theta + epsilon * mean_k delta_k (Reptile's interpolation; openai/supervised-reptile's FOMAML), and
Adam can use the same g. Note the scales differ, as in the reference: FOMAML's delta is one inner step (lr * grad),
Reptile's the whole K-step displacement.

The last FOMAML step uses all of D^val as one batch, without augmentation, as the reference does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fewshotseg.data.tasks import TaskTensors, fomaml_split, reptile_examples
from fewshotseg.meta_learning.update_routine import Learner, UpdateParams
from fewshotseg.meta_learning.weights import parameters, snapshot

ALGORITHMS = ("reptile", "fomaml", "fomaml-star", "r2d2")
R2D2_SCALE = 10.0  # logit = scale * (ridge output - 1/2): the ridge head regresses {0, 1}


def check_algorithm(name: str) -> str:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown meta-learning algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    return name


def task_difference(
    algorithm: str,
    learner: Learner,
    init: nn.Module,
    task: TaskTensors,
    params: UpdateParams,
    rng: np.random.Generator,
    *,
    train_shots: int,
    val_shots: int,
) -> list[torch.Tensor]:
    """Adapt to one task and return delta_k, one tensor per parameter of `init` (learner.model holds theta_K).

    Reptile trains on `train_shots` distinct examples. FOMAML splits a pool of `train_shots` examples into
    D^tr (train_shots - val_shots) and D^val (val_shots), disjoint; FOMAML* draws both with replacement from it.
    """
    n = len(task)
    if algorithm == "r2d2":
        return _ridge_difference(learner, init, task, params, rng, train_shots=train_shots, val_shots=val_shots)
    if algorithm == "reptile":
        learner.adapt(init, task.take(reptile_examples(rng, n, train_shots)), params, rng)
        return _difference(parameters(learner.model), parameters(init))
    pool = rng.permutation(n)[: min(train_shots, n)]
    if len(pool) <= val_shots and params.steps > 1:  # D^tr would be empty: nothing to take the first steps on
        raise ValueError(f"--val-shots {val_shots} leaves no D^tr examples: a task of {n} images gives a pool of "
                         f"{len(pool)} (--train-shots {train_shots}); use --val-shots below {len(pool)}")
    tr, val = fomaml_split(rng, len(pool), len(pool) - val_shots, val_shots, replacement=algorithm == "fomaml-star")
    d_val = task.take(pool[val])
    learner.adapt(init, task.take(pool[tr]), params, rng, steps=params.steps - 1)
    before = snapshot(parameters(learner.model))
    with learner.seeded(int(rng.integers(2**62))):  # dropout masks of the last step, reproducible per task
        learner.step(d_val.images, d_val.masks, params.lr_at(params.steps - 1))
    return _difference(parameters(learner.model), before)


@torch.no_grad()
def _difference(after: list[torch.Tensor], before: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch._foreach_sub(after, before))


def ridge_query_loss(model: nn.Module, support: TaskTensors, query: TaskTensors, l2: float) -> torch.Tensor:
    """The query pixels' class-balanced cross-entropy under a ridge head fit on the support pixels' features.

    Support and query go through the network in one batch (train mode: BatchNorm on their joint statistics);
    features as the probe's (`pixel_features`), labels of stride-4 cells by their foreground fraction."""
    from fewshotseg.models.closed_form import (
        balanced_weights,
        flatten,
        mask_targets,
        pixel_features,
        ridge_head,
    )

    images = torch.cat([support.images, query.images])
    feats = pixel_features(model, images)
    fs, fq = feats[: len(support)], feats[len(support):]
    ts, tq = mask_targets(support.masks, fs.shape[-2:]), mask_targets(query.masks, fq.shape[-2:])
    ys = (ts >= 0.5).float().flatten()
    weights = balanced_weights(ys)
    head = ridge_head(flatten(fs), ys, l2, weights / weights.sum())
    logits = R2D2_SCALE * (head.logits(fq) - 0.5)
    yq = (tq >= 0.5).float()
    wq = balanced_weights(yq.flatten()).view_as(yq)
    return (wq * torch.nn.functional.binary_cross_entropy_with_logits(logits, tq, reduction="none")).mean()


def _ridge_difference(learner: Learner, init: nn.Module, task: TaskTensors, params: UpdateParams,
                      rng: np.random.Generator, *, train_shots: int, val_shots: int) -> list[torch.Tensor]:
    """R2-D2's delta for one task: D^tr (support) and D^val (query) disjoint from a pool of `train_shots`."""
    pool = rng.permutation(len(task))[: min(train_shots, len(task))]
    if len(pool) <= val_shots:
        raise ValueError(f"--val-shots {val_shots} leaves no support examples in a pool of {len(pool)}; use "
                         f"--val-shots below {len(pool)}")
    tr, val = fomaml_split(rng, len(pool), len(pool) - val_shots, val_shots, replacement=False)
    learner.start(init, params)
    model = learner.model
    model.train()  # BatchNorm on batch statistics (their running averages move, as in every inner step)
    device = learner.device
    support, query = task.take(pool[tr]), task.take(pool[val])
    support = TaskTensors(support.images.to(device), support.masks.to(device))
    query = TaskTensors(query.images.to(device), query.masks.to(device))
    with learner.seeded(int(rng.integers(2**62))):
        loss = ridge_query_loss(model, support, query, params.probe_l2)
    if not torch.isfinite(loss):
        from fewshotseg.meta_learning.update_routine import DivergedError

        raise DivergedError(f"diverged: the R2-D2 query loss is {loss.item()}")
    grads = torch.autograd.grad(loss, parameters(model), allow_unused=True)
    learner.last_loss = loss.item()
    return [torch.zeros_like(p) if g is None else -params.lr * g for p, g in zip(parameters(model), grads, strict=True)]
