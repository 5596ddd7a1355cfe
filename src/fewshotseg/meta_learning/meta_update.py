"""Reptile, FOMAML and FOMAML*: each forms one difference per task; the meta-update is an ordinary optimizer step.

    Reptile:   delta_k = theta_k - theta              (K steps of U on D, `train_shots` examples; paper eq. 10)
    FOMAML:    delta_k = theta_K - theta_{K-1}         (K-1 steps on D^tr, then the last step on D^val; eq. 11)
    FOMAML*:   FOMAML with D^tr and D^val drawn with replacement from one pool (paper §5; REFERENCE §3.5)

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

ALGORITHMS = ("reptile", "fomaml", "fomaml-star")


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
