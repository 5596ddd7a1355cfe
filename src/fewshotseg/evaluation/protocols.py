"""Evaluation protocols: which images are support and which are query, and one episode's raw counts.

* ``paper`` (paper §5.1; REFERENCE §4): every test task, `splits` (2) random splits of its images into k support
  and 5 query images; a split scores the mean per-image IoU of its queries. The reference drew the 1+5 images of a
  1-shot split from the first 6 files only; here every split draws from all of the task's images.
* ``hsnet``: one seeded episode per query image: every image of a test class is the query once, with k support
  images drawn from the rest of the class. Reduced with class-pooled mIoU and FB-IoU.

An episode adapts the initialization with U on the support images (the working model starts from the
initialization's weights and BN statistics every time, so nothing leaks between episodes), predicts the query
images with the BN policy's prediction mode, and records per query image the foreground/background intersection
and union counts from which every reduction is computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from torch import nn

from fewshotseg.data.dataset import SegmentationDataset
from fewshotseg.data.tasks import TaskTensors, episode_rng, support_query_split
from fewshotseg.evaluation.metrics import episode_counts, image_iou
from fewshotseg.meta_learning.update_routine import Learner, UpdateParams

PROTOCOLS = ("paper", "hsnet")
QUERIES = 5  # the reference's DEFAULT_NUM_TEST_EXAMPLES


@dataclass(frozen=True)
class Episode:
    cls: str
    split: int  # split number (paper) or query position (hsnet)
    class_index: int
    support: tuple[int, ...]  # local indices within the class
    query: tuple[int, ...]
    rest: tuple[int, ...] = ()  # labelled images that are neither (usable for early stopping)

    def as_dict(self) -> dict:
        return asdict(self)


def paper_episodes(
    dataset: SegmentationDataset, names: list[str], shots: int, *, splits: int = 2, queries: int = QUERIES, seed: int = 0
) -> list[Episode]:
    episodes = []
    for ci, name in enumerate(names):
        for s in range(splits):
            rng = episode_rng(seed, 1, ci, s, shots)
            support, query, rest = support_query_split(rng, dataset.count(name), shots, queries)
            episodes.append(Episode(name, s, ci, tuple(support), tuple(query), tuple(rest)))
    return episodes


def hsnet_episodes(dataset: SegmentationDataset, names: list[str], shots: int, *, seed: int = 0) -> list[Episode]:
    episodes = []
    for ci, name in enumerate(names):
        n = dataset.count(name)
        for q in range(n):
            rng = episode_rng(seed, 2, ci, q, shots)
            others = np.delete(np.arange(n), q)
            support = rng.choice(others, size=shots, replace=False)
            rest = tuple(int(i) for i in others if i not in set(support.tolist()))
            episodes.append(Episode(name, q, ci, tuple(int(i) for i in support), (q,), rest))
    return episodes


def make_episodes(protocol: str, dataset: SegmentationDataset, names: list[str], shots: int, seed: int, splits: int = 2):
    if protocol == "paper":
        return paper_episodes(dataset, names, shots, splits=splits, seed=seed)
    if protocol == "hsnet":
        return hsnet_episodes(dataset, names, shots, seed=seed)
    raise ValueError(f"unknown protocol {protocol!r}; choose paper or hsnet")


def run_episode(
    learner: Learner,
    init: nn.Module,
    dataset: SegmentationDataset,
    episode: Episode,
    params: UpdateParams,
    *,
    seed: int = 0,
    steps: int | None = None,
    keep_predictions: bool = False,
) -> list[dict]:
    """Adapt on the support images, predict the queries; one row of raw counts per query image."""
    task = TaskTensors.from_dataset(dataset, episode.cls)
    support, query = task.take(list(episode.support)), task.take(list(episode.query))
    rng = episode_rng(seed, 3, episode.class_index, episode.split, len(episode.support))
    learner.adapt(init, support, params, rng, steps=steps)
    probs = learner.predict(query.images)
    pred = probs > 0.5
    start = dataset.offsets[episode.cls][0]
    rows = []
    for j, counts in enumerate(episode_counts(pred, query.masks)):
        row = {
            "class": episode.cls, "split": episode.split, "shots": len(episode.support),
            "query": dataset.files[start + episode.query[j]], **counts,
        }
        row["iou"] = image_iou(row)
        rows.append(row)
    if keep_predictions:
        learner.last_predictions = (query.images, query.masks, probs)
    return rows
