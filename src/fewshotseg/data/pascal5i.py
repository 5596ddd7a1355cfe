"""PASCAL-5i from PASCAL VOC2012: `JPEGImages/*.jpg` + `SegmentationClassAug/*.png`, one binary task per class.

`SegmentationClassAug` holds index PNGs (palette or grayscale): 0 = background, 1..20 = the classes below,
255 = the object-boundary band. The task of class c holds every image whose label map contains at least
`min_foreground` pixels of c, with mask = (label == c); an image with several classes appears once in each of
their tasks. Fold i (0..3) holds the classes 5i+1..5i+5 (the standard PASCAL-5i split).

Two ways to read it, each its own `--data` kind:

* `pascal5i:DIR` (and a bare VOC folder), HSNet-compatible: label 255 becomes IGNORE (counted neither way in the
  loss and the metrics); fold i's test tasks are its 5 classes on the images of the VOC 2012 validation list
  (`ImageSets/Segmentation/val.txt`, 1,449 images), scored at each image's original size; training uses the other
  15 classes on every SegmentationClassAug image that is not in that list (the 10,582 of SBD "trainaug"), as
  HSNet's fold lists do. Tuning (`tune --fold i`) uses the 15 training classes on the validation-list images.
* `pascal5i-aug:DIR`, fewshotseg's earlier reading: every SegmentationClassAug image in every split, label 255
  counted as background, scored at the square size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fewshotseg.data.dataset import DataError, Problem, SegmentationDataset
from fewshotseg.data.images import BadFile, Pair, decode_pairs, read_label, report_problems

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
BOUNDARY = 255  # SegmentationClassAug's boundary band
VAL_LIST = Path("ImageSets") / "Segmentation" / "val.txt"
DOWNLOAD = (
    "Download VOCtrainval_11-May-2012.tar (http://host.robots.ox.ac.uk/pascal/VOC/voc2012/) and the SBD-augmented "
    "masks SegmentationClassAug (SegmentationClassAug.zip, linked from the HSNet and DeepLab READMEs), and unpack "
    "them so that VOC_DIR/JPEGImages/*.jpg and VOC_DIR/SegmentationClassAug/*.png exist"
)


def fold_classes(fold: int) -> list[str]:
    """The 5 VOC class names of PASCAL-5i fold `fold` (0..3)."""
    if fold not in range(4):
        raise DataError(f"--fold: a PASCAL-5i fold is 0, 1, 2 or 3, not {fold}")
    return list(VOC_CLASSES[5 * fold : 5 * fold + 5])


def training_classes(fold: int) -> list[str]:
    """The 15 classes fold `fold` trains on."""
    held_out = set(fold_classes(fold))
    return [c for c in VOC_CLASSES if c not in held_out]


def val_list(root: Path) -> Path:
    """The VOC 2012 segmentation validation list, which HSNet's test episodes draw from."""
    path = root / VAL_LIST
    if not path.is_file():
        raise DataError(
            f"{path}: missing; the HSNet-compatible PASCAL-5i needs the VOC 2012 validation list. It comes with "
            f"VOCtrainval_11-May-2012.tar (VOC2012/{VAL_LIST}); or read the data as pascal5i-aug:{root} "
            "(every image, boundaries as background)"
        )
    return path


def is_voc_root(path: Path) -> bool:
    return (path / "JPEGImages").is_dir() and (path / "SegmentationClassAug").is_dir()


def find_voc_root(path: Path | str) -> Path:
    """The folder holding JPEGImages/ and SegmentationClassAug/: `path` itself, or its VOC2012 / VOCdevkit/VOC2012."""
    path = Path(path)
    for candidate in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if is_voc_root(candidate):
            return candidate.absolute()
    raise DataError(f"{path}: no PASCAL VOC2012 with SegmentationClassAug here. {DOWNLOAD}")


def _read_ids(image_list: Path) -> list[str]:
    try:
        lines = image_list.read_text().split()
    except OSError as err:
        raise DataError(
            f"{image_list}: cannot read the image list ({err}); pass a text file with one image id per line"
        ) from None
    return [line.strip() for line in lines if line.strip()]


def _class_pixels(label_path: Path) -> np.ndarray | Problem:
    """Pixel count of each class 0..20 of one label map (index 255 ignored), or the Problem that stops it."""
    try:
        counts = np.bincount(read_label(label_path).ravel(), minlength=256)
    except BadFile as err:
        return Problem(err.path, err.reason)
    unknown = np.flatnonzero(counts[len(VOC_CLASSES) + 1 : BOUNDARY])
    if unknown.size:
        return Problem(
            str(label_path),
            f"label values {', '.join(str(v + len(VOC_CLASSES) + 1) for v in unknown[:5])} are not VOC classes "
            "(expected 0..20 and 255): is this really SegmentationClassAug?",
        )
    return counts[: len(VOC_CLASSES) + 1]


def find_pairs(
    root: Path | str,
    *,
    image_list: Path | str | None = None,
    exclude_list: Path | str | None = None,
    min_foreground: int = 1,
    classes: Sequence[str] | None = None,
    ignore_boundary: bool = False,
    progress: bool = True,
) -> tuple[list[Pair], list[Problem]]:
    """One `Pair` per (image, class it contains). Reads every label map once to find its classes.

    `image_list` keeps only the listed image ids, `exclude_list` drops the listed ones; `ignore_boundary` makes
    label 255 IGNORE in the masks instead of background."""
    root = find_voc_root(root)
    wanted = VOC_CLASSES if classes is None else tuple(classes)
    unknown = sorted(set(wanted) - set(VOC_CLASSES))
    if unknown:
        raise DataError(
            f"not PASCAL VOC class names: {', '.join(unknown)}; the classes are {', '.join(VOC_CLASSES)}"
        )
    jpegs = {p.stem: p for p in (root / "JPEGImages").glob("*.jpg")}
    labels = {p.stem: p for p in (root / "SegmentationClassAug").glob("*.png")}
    problems: list[Problem] = []
    if image_list is None:
        ids = sorted(labels)
    else:
        ids = _read_ids(Path(image_list))
        problems += [
            Problem(str(root / "SegmentationClassAug" / f"{i}.png"), f"listed in {image_list} but has no label map")
            for i in ids if i not in labels
        ]  # fmt: skip
        ids = [i for i in ids if i in labels]
    if exclude_list is not None:
        excluded = set(_read_ids(Path(exclude_list)))
        ids = [i for i in ids if i not in excluded]
    problems += [
        Problem(str(labels[i]), f"label map without its image JPEGImages/{i}.jpg")
        for i in ids
        if i not in jpegs
    ]
    ids = [i for i in ids if i in jpegs]

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        scans = pool.map(lambda i: _class_pixels(labels[i]), ids)
        scans = list(
            tqdm(scans, total=len(ids), desc="reading PASCAL labels", unit="label", disable=not progress)
        )
    pairs: list[Pair] = []
    for i, counts in zip(ids, scans, strict=True):
        if isinstance(counts, Problem):
            problems.append(counts)
            continue
        for name in wanted:
            label = VOC_CLASSES.index(name) + 1
            if counts[label] >= min_foreground:
                pairs.append(Pair(name, jpegs[i], labels[i], label=label,
                                  ignore=BOUNDARY if ignore_boundary else None))
    for name in sorted(set(wanted) - {p.name for p in pairs}):
        problems.append(Problem(f"{root}/SegmentationClassAug", f"no image holds class {name!r}", "dropped"))
    return pairs, problems


def load_pascal5i(
    root: Path | str,
    size: int,
    *,
    image_list: Path | str | None = None,
    min_foreground: int = 1,
    strict: bool = False,
    progress: bool = True,
) -> SegmentationDataset:
    """All 20 PASCAL-5i tasks decoded at `size` px (without the cache); pick a fold with `fold_classes`."""
    root = find_voc_root(root)
    pairs, problems = find_pairs(
        root, image_list=image_list, min_foreground=min_foreground, progress=progress
    )
    dataset = decode_pairs(root, size, pairs, problems, strict=strict, progress=progress)
    report_problems(dataset.problems)
    return dataset
