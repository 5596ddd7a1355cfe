"""FP-k: five FSS-1000 tasks merged with their PASCAL-5i synonyms, for studying k from 1 to 400 shots.

Each task is the union of the FSS-1000 class's pairs and every PASCAL image holding the synonymous VOC class
(mask = that class), named by its FSS-1000 name. The paper's protocol draws 20 test + up to 400 training
examples per task, so every task must have at least 420 pairs; a short task is a `DataError` listing them all.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from fewshotseg.data import fss1000, pascal5i
from fewshotseg.data.dataset import DataError, Problem, SegmentationDataset
from fewshotseg.data.images import Pair, decode_pairs, report_problems

SYNONYMS = {  # FSS-1000 name -> PASCAL VOC name (the paper's Table 6)
    "airliner": "aeroplane",
    "bus": "bus",
    "motorbike": "motorbike",
    "potted_plant": "pottedplant",
    "television": "tvmonitor",
}
MIN_PAIRS = 420  # 400 training shots at most + 20 test examples


def voc_root_for_fp_k(voc_root: Path | str | None) -> Path:
    """The VOC folder, or a `DataError` saying that FP-k needs PASCAL, what to download and where to put it."""
    try:
        if voc_root is None:
            raise DataError("no VOC_DIR given.")
        return pascal5i.find_voc_root(voc_root)
    except DataError as err:
        raise DataError(
            f"FP-k merges FSS-1000 with PASCAL VOC2012, which is not on disk: {err} "
            f"Then pass --data fp-k:FSS_DIR,VOC_DIR.\n{pascal5i.DOWNLOAD}."
        ) from None


def find_pairs(
    fss_root: Path | str,
    voc_root: Path | str | None,
    *,
    image_list: Path | str | None = None,
    min_foreground: int = 1,
    progress: bool = True,
) -> tuple[list[Pair], list[Problem]]:
    """The pairs of the five FP-k tasks: FSS-1000's own plus the PASCAL synonyms' renamed to the FSS names."""
    voc = voc_root_for_fp_k(voc_root)
    fss_pairs, problems = fss1000.find_pairs(fss_root, classes=list(SYNONYMS))
    voc_pairs, voc_problems = pascal5i.find_pairs(
        voc,
        image_list=image_list,
        min_foreground=min_foreground,
        classes=list(SYNONYMS.values()),
        progress=progress,
    )
    fss_name = {voc_name: name for name, voc_name in SYNONYMS.items()}
    return fss_pairs + [replace(p, name=fss_name[p.name]) for p in voc_pairs], problems + voc_problems


def common_root(fss_root: Path | str, voc_root: Path | str) -> Path:
    """The folder that both datasets' file paths are made relative to."""
    return Path(os.path.commonpath([Path(fss_root).absolute(), Path(voc_root).absolute()]))


def check_task_sizes(dataset: SegmentationDataset, min_pairs: int = MIN_PAIRS) -> None:
    """Raise a `DataError` listing every FP-k task with fewer than `min_pairs` usable pairs."""
    counts = {name: dataset.count(name) if name in dataset.offsets else 0 for name in SYNONYMS}
    short = {name: n for name, n in counts.items() if n < min_pairs}
    if short:
        listed = ", ".join(f"{name} ({n})" for name, n in short.items())
        raise DataError(
            f"{dataset.root}: FP-k needs at least {min_pairs} usable pairs per task (20 test + 400 training); "
            f"short: {listed}. Use the complete FSS-1000 and PASCAL VOC2012 + SegmentationClassAug, "
            "without an image list that restricts PASCAL"
        )


def load_fp_k(
    fss_root: Path | str,
    voc_root: Path | str | None,
    size: int,
    *,
    min_pairs: int = MIN_PAIRS,
    strict: bool = False,
    progress: bool = True,
) -> SegmentationDataset:
    """The five FP-k tasks decoded at `size` px (without the cache)."""
    pairs, problems = find_pairs(fss_root, voc_root, progress=progress)
    dataset = decode_pairs(
        common_root(fss_root, voc_root), size, pairs, problems, strict=strict, progress=progress
    )
    report_problems(dataset.problems)
    check_task_sizes(dataset, min_pairs)
    return dataset
