"""A user's own support set and query images, for `fewshotseg adapt`.

A support folder holds labelled pairs in either convention of `fss1000.pair_class_folder`: FSS-style
`<n>.jpg` + `<n>.png`, or `name.jpg` + `name_mask.png`. A folder that holds no images but exactly one sub-folder
(an FSS-1000 class copied with its parent) is read through that sub-folder. Bad pairs are skipped and reported
with the same rules as every dataset; no usable pair at all is a `DataError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewshotseg.data.dataset import DataError, Problem
from fewshotseg.data.fss1000 import natural_key, pair_class_folder
from fewshotseg.data.images import IMAGE_SUFFIXES, decode_pairs, report_problems

LAYOUTS = "name.jpg + name_mask.png pairs, or FSS-style <n>.jpg + <n>.png pairs"


def _visible(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def pair_folder(directory: Path | str) -> Path:
    """The folder that holds the files: `directory`, or its only sub-folder when it holds no images itself."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such folder; pass a folder of {LAYOUTS}")
    entries = _visible(directory)
    folders = [p for p in entries if p.is_dir()]
    has_images = any(p.suffix.lower() in IMAGE_SUFFIXES for p in entries if p.is_file())
    return folders[0] if len(folders) == 1 and not has_images else directory


def load_support(directory: Path | str, size: int) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """(images (n, S, S, 3) uint8, masks (n, S, S) uint8 in {0, 1}, problems) of a support folder.

    The problems are already logged (once); they are returned for callers that want to show or count them.
    """
    folder = pair_folder(directory)
    pairs, problems = pair_class_folder(folder)
    if not pairs:
        found = "".join(f"\n  {p}" for p in problems[:10])
        raise DataError(f"{folder}: no support image/mask pair found; expected {LAYOUTS}.{found}")
    support = decode_pairs(folder, size, pairs, problems, progress=False)
    report_problems(support.problems)
    return np.asarray(support.images), np.asarray(support.masks), support.problems


def list_queries(directory: Path | str) -> list[Path]:
    """Image files to segment (.jpg/.jpeg/.png, natural order), leaving out masks: `*_mask.png` and a `.png`
    beside a same-stem `.jpg`/`.jpeg`. A single image file is accepted too."""
    path = Path(directory)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{path}: not a .jpg/.jpeg/.png image; pass an image or a folder of images")
        return [path]
    files = [p for p in _visible(pair_folder(path)) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    jpeg_stems = {p.stem for p in files if p.suffix.lower() in (".jpg", ".jpeg")}
    queries = [
        p for p in files
        if p.suffix.lower() != ".png" or not (p.stem.endswith("_mask") or p.stem in jpeg_stems)
    ]  # fmt: skip
    if not queries:
        raise DataError(f"{path}: no query images (.jpg/.jpeg/.png that are not masks) in it")
    return sorted(queries, key=lambda p: natural_key(p.name))


def skipped_queries(directory: Path | str) -> list[str]:
    """What a query folder holds that `list_queries` leaves out, each with the reason: sub-folders (queries are not
    searched in them), files that are not .jpg/.jpeg/.png images, and masks. Hidden files are not listed."""
    path = Path(directory)
    if path.is_file():
        return []
    folder = pair_folder(path)
    kept = set(list_queries(path))
    skipped = []
    for p in sorted(_visible(folder), key=lambda p: natural_key(p.name)):
        if p.is_dir():
            skipped.append(f"{p}: a folder (images in sub-folders are not segmented; pass that folder as --query)")
        elif p.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{p}: not a .jpg/.jpeg/.png image")
        elif p not in kept:
            skipped.append(f"{p}: a mask (named *_mask.png, or a .png beside a same-name .jpg), not a query")
    return skipped
