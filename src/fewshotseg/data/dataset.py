"""The one in-memory form of every dataset: classes of image/mask pairs decoded once at one square size.

Every loader (FSS-1000 folders, PASCAL-5i, FP-k, the built-in benchmark, a user's folders) produces a
`SegmentationDataset`; tasks, meta-training and evaluation only ever see this. Pixels live in two flat arrays
(memory-mapped when they come from the decode-once cache) and each class is a contiguous slice of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

# Mask value of pixels that count neither as foreground nor as background, in the loss and in every metric:
# PASCAL VOC's object-boundary band (label 255 in SegmentationClassAug), as HSNet and the field treat it.
IGNORE = 255


@dataclass(frozen=True)
class Problem:
    """One bad file (or folder) found while loading, and what was done about it."""

    path: str
    reason: str
    # What the loader did: "skipped" (the file or pair was left out), "converted" (loaded after a conversion,
    # e.g. an RGBA image lost its alpha) or "dropped" (a whole class was left out).
    action: str = "skipped"

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class DataError(ValueError):
    """Bad input that the user must fix; the message names the file and says what to do."""


@dataclass
class SegmentationDataset:
    """Every class's image/mask pairs decoded at one square size (memory-mapped from the cache): images (N, S, S, 3)
    uint8, masks (N, S, S) uint8 in {0, 1, IGNORE}, with per-class offsets, file names and what was skipped."""

    root: Path
    size: int
    names: list[str]  # class names, sorted
    images: np.ndarray  # (N, S, S, 3) uint8
    masks: np.ndarray  # (N, S, S) uint8 in {0, 1}, or {0, 1, IGNORE} for PASCAL-5i's boundaries
    offsets: dict[str, tuple[int, int]]  # class name -> (start, count) into images/masks
    files: list[str]  # N image paths relative to root (for reports and error messages)
    problems: list[Problem] = field(default_factory=list)
    # (N, 2) int (height, width) of each image before resizing, for `check-data`; None when a loader doesn't know.
    original_sizes: np.ndarray | None = None
    # Per example, its mask at the image's original size as COCO run-length encodings
    # ({"size": [h, w], "fg": counts, "ignore": counts or None}), for scoring at the original size (HSNet's
    # PASCAL-5i and COCO-20i protocols); None when predictions are scored at the square size.
    originals: list[dict] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def count(self, name: str) -> int:
        return self.offsets[name][1]

    def indices(self, name: str) -> np.ndarray:
        """Global example indices of one class."""
        start, count = self.offsets[name]
        return np.arange(start, start + count)

    def pairs(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images (n, S, S, 3) uint8, masks (n, S, S) uint8) of one class; views, not copies."""
        start, count = self.offsets[name]
        return self.images[start : start + count], self.masks[start : start + count]

    def subset(self, names: list[str]) -> SegmentationDataset:
        """The same arrays restricted to some classes; unknown names are an error listing them."""
        missing = sorted(set(names) - set(self.offsets))
        if missing:
            shown = ", ".join(missing[:20]) + (f" ... ({len(missing)} in all)" if len(missing) > 20 else "")
            raise DataError(f"{self.root}: {len(missing)} class(es) of the split are not in the dataset: {shown}")
        keep = sorted(set(names))
        return replace(self, names=keep, offsets={n: self.offsets[n] for n in keep})
