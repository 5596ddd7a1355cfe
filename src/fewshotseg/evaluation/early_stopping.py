"""Early stopping (paper App. B, E): adapt one step at a time on part of the labelled data and score the IoU on a
held-out part after every step; report the best step, which the caller turns into a step count (UHO takes the
median over tasks; FP-k retrains on all k images for the steps found). The held-out images are never the images
that are finally scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fewshotseg.data.tasks import TaskTensors
from fewshotseg.evaluation.metrics import binary_iou
from fewshotseg.meta_learning.update_routine import Learner, UpdateParams


@dataclass
class EarlyStopping:
    patience: int = 50  # the reference's UHO and FP-k value; App. E also uses 100
    max_steps: int = 20  # paper App. B: 20 (EfficientLab-3) or 80 (EfficientLab-6-3)
    min_steps: int = 1


@dataclass
class EarlyStoppingResult:
    best_step: int
    best_score: float
    scores: list[float] = field(default_factory=list)  # held-out IoU after steps 1..n
    monitored: list[float] = field(default_factory=list)  # optional second set (e.g. query IoU), same steps


def score(learner: Learner, task: TaskTensors) -> torch.Tensor:
    """Per-image IoU (n,) of the learner's current weights on labelled images."""
    return binary_iou(learner.predict(task.images) > 0.5, task.masks)


def early_stopping(
    learner: Learner,
    init: nn.Module,
    train: TaskTensors,
    holdout: TaskTensors,
    params: UpdateParams,
    stopping: EarlyStopping,
    rng: np.random.Generator,
    *,
    monitor: TaskTensors | None = None,
) -> EarlyStoppingResult:
    """Adapt one step at a time on `train`; after each step score `holdout`; stop after `patience` steps without
    a strictly better score or at `max_steps`. `monitor` images are scored too, never used to stop."""
    result = EarlyStoppingResult(best_step=stopping.min_steps, best_score=-math.inf)
    for step in learner.adapt_steps(init, train, params, rng, steps=stopping.max_steps):
        value = float(score(learner, holdout).mean())
        result.scores.append(value)
        if monitor is not None:
            result.monitored.append(float(score(learner, monitor).mean()))
        if step >= stopping.min_steps and value > result.best_score:
            result.best_step, result.best_score = step, value
        if step - result.best_step >= stopping.patience:
            break
    return result
