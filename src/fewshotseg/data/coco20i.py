"""COCO-20i from MS COCO 2014: one binary task per category, four folds of 20 interleaved classes.

Layout (the COCO 2014 download, unpacked into one folder):

    DIR/train2014/*.jpg   DIR/annotations/instances_train2014.json
    DIR/val2014/*.jpg     DIR/annotations/instances_val2014.json

The 80 categories are numbered 1..80 in the order of their COCO ids; fold i (0..3) holds the classes 4k + i + 1
(k = 0..19), the interleaved split HSNet and the field use (fold 0: person, airplane, boat, parking meter, ...).
The task of a category holds every image with at least one annotation of it; its mask is the union of those
annotations (polygons, uncompressed and compressed RLE alike, decoded by pycocotools, crowd regions included as
foreground), so an image with several categories appears once in each of their tasks. Training uses the other 60
classes on train2014; test episodes use the fold's 20 classes on val2014, scored at each image's original size;
tuning (`tune --fold i`) uses the 60 training classes on val2014.

Category names are COCO's with spaces replaced by underscores (`traffic_light`).
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from fewshotseg.data.dataset import DataError, Problem
from fewshotseg.data.images import Pair

FOLDS = 4
PARTS = ("train", "val")
DOWNLOAD = (
    "Download train2014.zip, val2014.zip and annotations_trainval2014.zip from https://cocodataset.org/#download "
    "and unpack them into one folder so that DIR/train2014/, DIR/val2014/ and "
    "DIR/annotations/instances_{train,val}2014.json exist"
)


def annotation_file(root: Path, part: str) -> Path:
    return root / "annotations" / f"instances_{part}2014.json"


def image_folder(root: Path, part: str) -> Path:
    return root / f"{part}2014"


def is_coco_root(path: Path) -> bool:
    return (path / "annotations").is_dir() and any(image_folder(path, p).is_dir() for p in PARTS)


def find_coco_root(path: Path | str) -> Path:
    path = Path(path)
    if is_coco_root(path):
        return path.absolute()
    raise DataError(f"{path}: no COCO 2014 here (annotations/ and train2014/ or val2014/). {DOWNLOAD}")


def _load(root: Path, part: str):
    """pycocotools' index of one annotation file; a missing or malformed file is a DataError naming it."""
    from pycocotools.coco import COCO

    path = annotation_file(root, part)
    if not path.is_file():
        raise DataError(f"{path}: missing. {DOWNLOAD}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints timing lines
            return COCO(str(path))
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as err:
        raise DataError(f"{path}: not a COCO instances file ({type(err).__name__}: {err}); {DOWNLOAD}") from None


def category_names(coco) -> list[str]:
    """The 80 class names in COCO id order: class index c (1..80) is entry c - 1."""
    cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    return [c["name"].replace(" ", "_") for c in cats]


def fold_classes(fold: int, names: Sequence[str]) -> list[str]:
    """The 20 classes of COCO-20i fold `fold`: class indices 4k + fold + 1, k = 0..19 (1-based)."""
    if fold not in range(FOLDS):
        raise DataError(f"--fold: a COCO-20i fold is 0, 1, 2 or 3, not {fold}")
    return [names[4 * k + fold] for k in range(len(names) // FOLDS)]


def training_classes(fold: int, names: Sequence[str]) -> list[str]:
    held_out = set(fold_classes(fold, names))
    return [n for n in names if n not in held_out]


def find_pairs(
    root: Path | str,
    part: str,
    *,
    fold: int | None = None,
    held_out: bool = True,
    min_foreground: int = 1,
) -> tuple[list[Pair], list[Problem]]:
    """One `Pair` per (image, category it holds) of `part` (train or val). With a fold, only the fold's 20
    classes (`held_out`) or only the other 60 (`held_out=False`)."""
    root = find_coco_root(root)
    if part not in PARTS:
        raise DataError(f"COCO-20i part must be train or val, not {part!r}")
    coco = _load(root, part)
    names = category_names(coco)
    ids = sorted(coco.getCatIds())
    name_of = dict(zip(ids, names, strict=True))
    wanted = set(names)
    if fold is not None:
        wanted = set(fold_classes(fold, names) if held_out else training_classes(fold, names))
    folder = image_folder(root, part)
    problems: list[Problem] = []
    pairs: list[Pair] = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        by_category: dict[str, list] = defaultdict(list)
        area: dict[str, float] = defaultdict(float)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            name = name_of.get(ann["category_id"])
            if name in wanted:
                by_category[name].append(ann["segmentation"])
                area[name] += float(ann.get("area", 0))
        if not by_category:
            continue
        image = folder / info["file_name"]
        if not image.is_file():
            problems.append(Problem(str(image), f"named in {annotation_file(root, part).name} but missing"))
            continue
        for name, segments in sorted(by_category.items()):
            if area[name] < min_foreground:
                continue
            pairs.append(Pair(name, image, annotation_file(root, part), segments=tuple(segments),
                              shape=(int(info["height"]), int(info["width"]))))
    for name in sorted(wanted - {p.name for p in pairs}):
        problems.append(Problem(str(annotation_file(root, part)), f"no image holds class {name!r}", "dropped"))
    return pairs, problems

