"""`fewshotseg check-data`: load a dataset the way training will, and say what is in it and what is wrong.

Prints classes, pairs (total and per class min/median/max), original image sizes, foreground fractions (with
classes whose masks are tiny or nearly the whole image flagged: such tasks are degenerate) and every problem.
The dataset goes through the decode-once cache, so checking a dataset also prepares it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from fewshotseg.data import fp_k
from fewshotseg.data.cache import cached
from fewshotseg.data.dataset import DataError, Problem, SegmentationDataset
from fewshotseg.data.sources import DataSource, parse_spec

TINY_FOREGROUND = 0.02  # a class whose masks cover less than this on average is flagged
HUGE_FOREGROUND = 0.90  # ... or more than this


def foreground_fractions(dataset: SegmentationDataset) -> np.ndarray:
    """(N,) share of foreground pixels of every mask, read in chunks so a memory-mapped cache stays on disk."""
    n, chunk = len(dataset.files), 256
    pixels = dataset.size * dataset.size
    return np.concatenate(
        [
            dataset.masks[i : i + chunk].reshape(-1, pixels).sum(axis=1, dtype=np.int64) / pixels
            for i in range(0, n, chunk)
        ]
    )


def _sizes_line(original_sizes: np.ndarray | None) -> str:
    if original_sizes is None:
        return "unknown"
    counts = Counter(f"{w}x{h}" for h, w in original_sizes.tolist())
    common = ", ".join(f"{size} ({n})" for size, n in counts.most_common(5))
    areas = original_sizes.prod(axis=1)
    (h0, w0), (h1, w1) = original_sizes[areas.argmin()], original_sizes[areas.argmax()]
    return f"{len(counts)} distinct; most common {common}; smallest {w0}x{h0}, largest {w1}x{h1}"


def describe(dataset: SegmentationDataset) -> list[str]:
    """The report's lines about what the dataset holds."""
    counts = np.array([dataset.count(name) for name in dataset.names])
    fractions = foreground_fractions(dataset)
    class_means = {name: fractions[dataset.indices(name)].mean() for name in dataset.names}
    tiny = sorted(name for name, f in class_means.items() if f < TINY_FOREGROUND)
    huge = sorted(name for name, f in class_means.items() if f > HUGE_FOREGROUND)
    lo, hi = int(fractions.argmin()), int(fractions.argmax())

    def flagged(names: list[str]) -> str:
        return ", ".join(f"{n} ({100 * class_means[n]:.1f} %)" for n in names) or "none"

    return [
        f"classes      {len(dataset)}",
        f"pairs        {counts.sum()}; per class min {counts.min()}, median {np.median(counts):g}, max {counts.max()}",
        f"image sizes  {_sizes_line(dataset.original_sizes)} (before resizing to {dataset.size} px)",
        f"foreground   mean {100 * fractions.mean():.1f} % of pixels; min {100 * fractions[lo]:.1f} % "
        f"({dataset.files[lo]}), max {100 * fractions[hi]:.1f} % ({dataset.files[hi]})",
        f"  classes with tiny foreground (mean < {100 * TINY_FOREGROUND:g} %): {flagged(tiny)}",
        f"  classes with huge foreground (mean > {100 * HUGE_FOREGROUND:g} %): {flagged(huge)}",
    ]


def _fp_k_shortfall(dataset: SegmentationDataset, source: DataSource) -> list[Problem]:
    if source.kind != "fp-k":
        return []
    try:
        fp_k.check_task_sizes(dataset, source.min_pairs)
    except DataError as err:
        return [Problem(str(dataset.root), str(err).removeprefix(f"{dataset.root}: "), "dropped")]
    return []


def check_data(spec: str | Path | DataSource, size: int = 224, strict: bool = False) -> int:
    """Print the report; the exit code is 1 when `strict` and any problem was found, else 0.

    The dataset is always loaded leniently so that every problem is listed, not only the first.
    """
    source = parse_spec(spec)
    dataset, entry, _ = cached(source, size)
    problems = dataset.problems + _fp_k_shortfall(dataset, source)
    print(f"dataset      {source.kind} {dataset.root} (cache: {entry})")
    for line in describe(dataset):
        print(line)
    print(f"problems     {len(problems)}")
    for problem in problems:
        print(f"  {problem.action}: {problem}")
    return 1 if strict and problems else 0
