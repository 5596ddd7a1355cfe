"""Confidence intervals: the paper's normal interval over task splits, and a bootstrap over classes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.half_width:.2f} %"

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "ci95": self.half_width, "n": self.n}


def paper_ci95(values: Sequence[float]) -> Estimate:
    """Mean ± 1.96 * sigma / sqrt(n) with the population sigma (ddof 0), as the reference's `utils.ci95`."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values to average")
    mean = float(values.mean())
    half = 1.96 * float(values.std(ddof=0)) / np.sqrt(values.size)
    return Estimate(mean, mean - half, mean + half, int(values.size))


def bootstrap_over_classes(
    rows_by_class: Mapping[str, Sequence[Mapping]],
    statistic: Callable[[list[Mapping]], float],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap CI95 of `statistic` (e.g. HSNet's class-pooled mIoU), resampling classes.

    Classes are the units that were sampled (episodes of one class are correlated), so a class drawn twice
    contributes all of its episodes twice; a resampled class gets a distinct name so pooling keeps copies apart.
    """
    classes = sorted(rows_by_class)
    rng = np.random.default_rng(seed)
    point = statistic([r for c in classes for r in rows_by_class[c]])
    stats = np.empty(resamples)
    for b in range(resamples):
        drawn = rng.integers(0, len(classes), size=len(classes))
        rows = [{**r, "class": f"{j}"} for j, c in enumerate(drawn) for r in rows_by_class[classes[c]]]
        stats[b] = statistic(rows)
    low, high = np.percentile(stats, [2.5, 97.5])
    return Estimate(float(point), float(low), float(high), len(classes))
