"""Evaluation protocols: which images are support and which are query, and one episode's raw counts.

* ``paper`` (paper §5.1; REFERENCE §4): every test task, `splits` (2) random splits of its images into k support
  and 5 query images; a split scores the mean per-image IoU of its queries. The reference drew the 1+5 images of a
  1-shot split from the first 6 files only; here every split draws from all of the task's images.
* ``hsnet`` (HSNet's test loop): `episodes` (1000) seeded episodes per run. Episode e's query is entry e mod N of
  the test (image, class) pairs sorted by image file, as HSNet cycles through its PASCAL fold list, or, with
  `class_uniform` (HSNet's COCO loader), a uniformly drawn class and then a uniformly drawn image of it; its k
  support images are drawn from the other images of the class. `evaluate` repeats this for 5 seeds. Reduced with
  class-pooled mIoU and FB-IoU.
* ``per-query`` (fewshotseg's earlier "hsnet"): one seeded episode per query image, every image of a test class
  the query once, with k support images drawn from the rest of the class.

An episode adapts the initialization with U on the support images (the working model starts from the
initialization's weights and BN statistics every time, so nothing leaks between episodes), predicts the query
images with the BN policy's prediction mode, and records per query image the foreground/background intersection
and union counts from which every reduction is computed. When the dataset keeps its masks at their original
sizes (HSNet-compatible PASCAL-5i, COCO-20i), the foreground probability is resized bilinearly to the query
image's original size and thresholded there, and IGNORE pixels count nowhere. Each row also holds the counts of
the two floors (`metrics.floor_counts`) on the same target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewshotseg.adaptation import MethodSpec, OneClassSupportError, make_adapter
from fewshotseg.data.dataset import IGNORE, SegmentationDataset
from fewshotseg.data.images import decode_original
from fewshotseg.data.tasks import TaskTensors, episode_rng, support_query_split
from fewshotseg.evaluation.metrics import episode_counts, floor_counts, image_iou
from fewshotseg.meta_learning.update_routine import Learner, UpdateParams

PROTOCOLS = ("paper", "hsnet", "per-query")
QUERIES = 5  # the reference's DEFAULT_NUM_TEST_EXAMPLES
HSNET_EPISODES = 1000  # HSNet's test episodes per fold
HSNET_SEEDS = 5  # runs of those episodes with different seeds, averaged


@dataclass(frozen=True)
class Episode:
    """One evaluation episode: a class, its split (or query position), and the local indices of its support,
    query and unused images."""

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
    """The paper's test tasks: per class, `splits` seeded support/query splits of `shots` + `queries` images."""
    episodes = []
    for ci, name in enumerate(names):
        for s in range(splits):
            rng = episode_rng(seed, 1, ci, s, shots)
            support, query, rest = support_query_split(rng, dataset.count(name), shots, queries)
            episodes.append(Episode(name, s, ci, tuple(support), tuple(query), tuple(rest)))
    return episodes


def hsnet_episodes(
    dataset: SegmentationDataset, names: list[str], shots: int, *, seed: int = 0, episodes: int = HSNET_EPISODES,
    class_uniform: bool = False,
) -> list[Episode]:
    """HSNet's seeded test episodes (see the module docstring); a class needs shots + 1 images."""
    names = [n for n in names if dataset.count(n) > shots]
    if not names:
        raise ValueError(f"no test class has the {shots} + 1 images a {shots}-shot episode needs")
    # (file, class index, local index) of every query candidate, in file order
    pool = sorted((dataset.files[dataset.offsets[n][0] + i], ci, i)
                  for ci, n in enumerate(names) for i in range(dataset.count(n)))
    out = []
    for e in range(episodes):
        rng = episode_rng(seed, 8, e, shots)
        if class_uniform:
            ci = int(rng.integers(len(names)))
            q = int(rng.integers(dataset.count(names[ci])))
        else:
            _, ci, q = pool[e % len(pool)]
        others = np.delete(np.arange(dataset.count(names[ci])), q)
        support = rng.choice(others, size=shots, replace=False)
        rest = tuple(int(i) for i in others if i not in set(support.tolist()))
        out.append(Episode(names[ci], e, ci, tuple(int(i) for i in support), (q,), rest))
    return out


def per_query_episodes(dataset: SegmentationDataset, names: list[str], shots: int, *, seed: int = 0) -> list[Episode]:
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


def make_episodes(protocol: str, dataset: SegmentationDataset, names: list[str], shots: int, seed: int,
                  splits: int = 2, episodes: int = HSNET_EPISODES, class_uniform: bool = False):
    if protocol == "paper":
        return paper_episodes(dataset, names, shots, splits=splits, seed=seed)
    if protocol == "hsnet":
        return hsnet_episodes(dataset, names, shots, seed=seed, episodes=episodes, class_uniform=class_uniform)
    if protocol == "per-query":
        return per_query_episodes(dataset, names, shots, seed=seed)
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def images_needed(protocol: str, shots: int) -> int:
    """Images a class needs for one `shots`-shot task of a protocol: k support + 5 query (paper), k + 1 (hsnet,
    per-query: one query image, the support drawn from the rest)."""
    return shots + (QUERIES if protocol == "paper" else 1)


def check_shots(dataset: SegmentationDataset, names: list[str], shots: list[int], protocol: str, where: str) -> None:
    """Refuse, before anything runs, every shot count some class of `names` has too few images for (the paper and
    per-query protocols use every class; hsnet needs one), with the numbers and what to do."""
    from fewshotseg.data.dataset import DataError

    if not names:
        raise DataError(f"{where}: no class to evaluate")
    counts = {n: dataset.count(n) for n in names}
    refused = []
    for k in shots:
        need = images_needed(protocol, k)
        short = sorted((c, n) for n, c in counts.items() if c < need)
        if short and (protocol != "hsnet" or len(short) == len(counts)):
            shown = ", ".join(f"{n} ({c})" for c, n in short[:5]) + (" ..." if len(short) > 5 else "")
            refused.append(f"--shots {k}: a {protocol}-protocol task needs {need} images per class ({k} support + "
                           f"{need - k} query); {len(short)} of the {len(counts)} classes have fewer: {shown}")
    if refused:
        usable = max(counts.values()) if protocol == "hsnet" else min(counts.values())
        most = usable - images_needed(protocol, 0)
        fix = ("use --shots 1" if most == 1 else f"use --shots {most} or fewer" if most > 1 else
               "no shot count fits") + ", or add labelled images to those classes"
        raise DataError(f"{where}: " + "; ".join(refused) + f". Nothing was run: {fix}")


def score_queries(dataset: SegmentationDataset, episode: Episode, probs: torch.Tensor,
                  masks: torch.Tensor) -> list[tuple[dict, dict]]:
    """(counts, floor counts) per query image: at the original size when the dataset keeps it, else at the
    square size. `probs` (Q, S, S) foreground probabilities, `masks` (Q, S, S) the square masks."""
    start = dataset.offsets[episode.cls][0]
    support_masks = dataset.masks[[start + i for i in episode.support]]
    valid = support_masks != IGNORE
    rate = float(((support_masks == 1) & valid).sum() / max(valid.sum(), 1))
    out = []
    for j, q in enumerate(episode.query):
        if dataset.originals is not None:
            target = torch.from_numpy(decode_original(dataset.originals[start + q]))
            prob = F.interpolate(probs[j][None, None].float(), size=tuple(target.shape), mode="bilinear",
                                 align_corners=False)[0, 0]
        else:
            target, prob = masks[j], probs[j]
        out.append((episode_counts((prob > 0.5)[None], target[None])[0], floor_counts(target, rate)))
    return out


def run_episode(
    learner: Learner,
    init: nn.Module,
    dataset: SegmentationDataset,
    episode: Episode,
    params: UpdateParams,
    *,
    seed: int = 0,
    steps: int | None = None,
    method: MethodSpec | None = None,
) -> list[dict]:
    """Adapt on the support images (fine-tuning with U by default, else `method`), predict the queries; one row of
    raw counts per query image."""
    task = TaskTensors.from_dataset(dataset, episode.cls)
    support, query = task.take(list(episode.support)), task.take(list(episode.query))
    rng = episode_rng(seed, 3, episode.class_index, episode.split, len(episode.support))
    adapter = make_adapter(method or MethodSpec(), params=params, device=learner.device, learner=learner,
                           steps=steps)
    try:
        adapter.fit(init, support, rng)
        probs = adapter.predict(query.images)
    except OneClassSupportError:  # support masks of one class on the method's grid: predict that class everywhere
        probs = torch.full((len(query), *query.images.shape[-2:]), float(support.masks.float().mean() >= 0.5))
    learner.last_predictions = (query.images, probs)
    start = dataset.offsets[episode.cls][0]
    rows = []
    for j, (counts, floors) in enumerate(score_queries(dataset, episode, probs, query.masks)):
        row = {
            "class": episode.cls, "split": episode.split, "shots": len(episode.support),
            "query": dataset.files[start + episode.query[j]], **counts, "floors": floors,
        }
        row["iou"] = image_iou(row)
        rows.append(row)
    return rows
