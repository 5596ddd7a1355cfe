"""Evaluate an initialization from Python: the paper's protocol on a dataset in memory, typed results.

`evaluate_initialization(model, dataset)` adapts a copy of `model` with U on each class's support images and scores
the queries, as `fewshotseg evaluate` does, but without a run folder or worker processes; it returns an
`EvaluationResult` (dataclasses, not string-keyed dicts).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fewshotseg.data.dataset import SegmentationDataset
from fewshotseg.evaluation.intervals import interval_by_class
from fewshotseg.evaluation.metrics import split_scores
from fewshotseg.evaluation.protocols import paper_episodes, run_episode
from fewshotseg.meta_learning.update_routine import Learner, Loss, UpdateParams
from fewshotseg.models.losses import segmentation_loss


@dataclass(frozen=True)
class ClassResult:
    """One class: the mean IoU over its task splits (each split: the mean IoU of its query images)."""

    name: str
    mean_iou: float
    split_ious: tuple[float, ...]


@dataclass(frozen=True)
class EvaluationResult:
    """The paper's number: mean IoU over all task splits of all classes, with its 95% interval: Student's t over the
    task splits with one split per class, a bootstrap over classes with several (`interval`)."""

    mean_iou: float
    ci95_low: float
    ci95_high: float
    shots: int
    classes: tuple[ClassResult, ...]
    interval: str = "t"

    @property
    def tasks(self) -> int:
        return sum(len(c.split_ious) for c in self.classes)


def evaluate_initialization(
    model: nn.Module,
    dataset: SegmentationDataset,
    *,
    classes: list[str] | None = None,
    shots: int = 5,
    splits: int = 2,
    params: UpdateParams | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    loss: Loss = segmentation_loss,
) -> EvaluationResult:
    """Adapt `model` (left untouched) to every class of `dataset` (or `classes`) with `shots` support images, in
    `splits` random support/query splits per class, and score 5 query images per split."""
    names = list(classes) if classes is not None else list(dataset.names)
    params = params or UpdateParams()
    init = model.to(device)
    learner = Learner(copy.deepcopy(model), device, loss=loss)
    rows: list[dict] = []
    for episode in paper_episodes(dataset, names, shots, splits=splits, seed=seed):
        rows += run_episode(learner, init, dataset, episode, params, seed=seed)
    by_split = split_scores(rows)  # (class, split) -> mean query IoU
    per_class = []
    for name in names:
        values = tuple(v for (cls, _), v in sorted(by_split.items()) if cls == name)
        per_class.append(ClassResult(name, float(np.mean(values)), values))
    estimate = interval_by_class(list(by_split.values()), [cls for cls, _ in by_split])
    return EvaluationResult(estimate.mean, estimate.low, estimate.high, shots, tuple(per_class), estimate.interval)
