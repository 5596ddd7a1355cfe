"""Every number fewshotseg reports starts here: per-image IoU and per-episode intersection/union counts.

Two reductions are in use in this field and they differ:

* The paper's (and its reference code's): per query image, binary IoU of the 0.5-thresholded foreground
  probability; an empty prediction on an empty mask scores 1 (the reference's (0 + 1e-7) / (0 + 1e-7)). A task
  split scores the mean over its query images; a method scores the mean over task splits. Its 95 % interval is
  fewshotseg's, not the reference's 1.96 * sigma / sqrt(n): Student's t over the splits when each class has one,
  a bootstrap over classes when a class has several (its splits are correlated). See `intervals.py`.
* HSNet's: intersections and unions are summed over all episodes of a class first; the class's IoU is the ratio of
  sums, mIoU is the mean over classes ("class-pooled"), and FB-IoU is the mean over {background, foreground} of
  the ratio of sums over every episode.

Both are computed from the same raw counts, which `evaluate` writes one row per episode. Pixels whose target is
IGNORE (PASCAL's object boundaries, 255) are counted in no intersection and no union, as in HSNet.

Floors: the same counts for two predictions that use no image at all, computed on the same episodes, so a table
shows which rows are above chance: everything foreground, and every pixel foreground with the support masks' mean
foreground rate as its probability (expected counts: a pixel is foreground with probability r).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from fewshotseg.data.dataset import IGNORE


def binary_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image IoU (B,) of boolean/{0,1} predictions and {0, 1, IGNORE} targets (B, H, W); 1.0 where both are
    empty."""
    valid = target != IGNORE
    pred, target = pred.bool() & valid, (target == 1) & valid
    intersection = (pred & target).flatten(1).sum(1).double()
    union = (pred | target).flatten(1).sum(1).double()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def episode_counts(pred: torch.Tensor, target: torch.Tensor) -> list[dict[str, int]]:
    """Foreground and background intersection/union pixel counts of each image in a batch (B, H, W); IGNORE
    pixels of the target count nowhere."""
    valid = target != IGNORE
    pred, target = pred.bool(), target == 1
    fg_i = (pred & target & valid).flatten(1).sum(1)
    fg_u = ((pred | target) & valid).flatten(1).sum(1)
    bg_i = (~pred & ~target & valid).flatten(1).sum(1)
    bg_u = ((~pred | ~target) & valid).flatten(1).sum(1)
    return [
        {"fg_i": int(a), "fg_u": int(b), "bg_i": int(c), "bg_u": int(d)}
        for a, b, c, d in zip(fg_i.tolist(), fg_u.tolist(), bg_i.tolist(), bg_u.tolist(), strict=True)
    ]


def floor_counts(target: torch.Tensor, rate: float) -> dict[str, dict[str, float]]:
    """The counts of the two floors for one target (H, W): "all_foreground" (every valid pixel foreground) and
    "support_rate" (every pixel foreground with probability `rate`, expected counts)."""
    valid = target != IGNORE
    fg = int(((target == 1) & valid).sum())
    n = int(valid.sum())
    bg = n - fg
    return {
        "all_foreground": {"fg_i": fg, "fg_u": n, "bg_i": 0, "bg_u": bg},
        # E[I_fg] = r fg; E[U_fg] = fg + r bg; E[I_bg] = (1 - r) bg; E[U_bg] = bg + (1 - r) fg
        "support_rate": {"fg_i": rate * fg, "fg_u": fg + rate * bg, "bg_i": (1 - rate) * bg,
                         "bg_u": bg + (1 - rate) * fg},
    }


def image_iou(counts: Mapping[str, int]) -> float:
    """The paper's per-image IoU from one episode row's counts."""
    return counts["fg_i"] / counts["fg_u"] if counts["fg_u"] > 0 else 1.0


def class_pooled_iou(rows: Iterable[Mapping]) -> dict[str, float]:
    """Per class: sum of foreground intersections / sum of unions over its episodes (HSNet)."""
    inter: dict[str, int] = defaultdict(int)
    union: dict[str, int] = defaultdict(int)
    for row in rows:
        inter[row["class"]] += row["fg_i"]
        union[row["class"]] += row["fg_u"]
    return {c: inter[c] / max(union[c], 1) for c in inter}


def hsnet_miou(rows: Iterable[Mapping]) -> float:
    """HSNet's mIoU: the mean over classes of the class-pooled foreground IoU."""
    per_class = class_pooled_iou(rows)
    return float(np.mean(list(per_class.values())))


def fb_iou(rows: Iterable[Mapping]) -> float:
    """HSNet's FB-IoU: the mean over {background, foreground} of (sum of intersections / sum of unions)."""
    rows = list(rows)
    fg = sum(r["fg_i"] for r in rows) / max(sum(r["fg_u"] for r in rows), 1)
    bg = sum(r["bg_i"] for r in rows) / max(sum(r["bg_u"] for r in rows), 1)
    return (fg + bg) / 2


def per_episode_miou(rows: Iterable[Mapping]) -> float:
    """The plain mean of per-image IoU over episodes (no pooling)."""
    return float(np.mean([image_iou(r) for r in rows]))


def split_scores(rows: Iterable[Mapping]) -> dict[tuple[str, int], float]:
    """The paper's per task-split score: mean per-image IoU over the split's query images."""
    grouped: dict[tuple[str, int], list[float]] = defaultdict(list)
    for row in rows:
        grouped[(row["class"], row["split"])].append(image_iou(row))
    return {key: float(np.mean(values)) for key, values in grouped.items()}
