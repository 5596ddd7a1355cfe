"""The FSS-1000 folder layout, the one on-disk format every user dataset follows: `<root>/<class>/<n>.jpg` + `<n>.png`.

Pairing inside a class folder:
  * `<stem>_mask.png` is the mask of `<stem>.jpg`, `.jpeg` or `.png` (first found in that order);
  * otherwise image `<stem>.jpg` (or `.jpeg`) has the mask `<stem>.png`.
Suffixes match case-insensitively. Class names are the folder names verbatim: FSS-1000 has `"thors_hammer"` (with
the quotes) and `abe's_flyingfish`. Pairs are ordered by natural sort (1, 2, ..., 10).

Ignored silently: hidden files and folders (names starting with '.', e.g. the cache) and files at the root
(e.g. `splits.json`). Reported, and the item skipped (or a `DataError` in strict mode):
  * an image without a mask, or a mask without an image;
  * a second image with the same stem (FSS-1000 has a stray `.jpeg` beside the `.jpg` in `banana_boat` and
    `wandering_albatross`): the `.jpg` is used, the other reported once;
  * a file that is not .jpg/.jpeg/.png (e.g. `notes.txt`), or a folder inside a class folder;
  * every per-pair problem of `images.decode_pair` (corrupt or truncated file, mask size mismatch, non-binary or
    all-background mask, like FSS-1000's broken `peregine_falcon` mask);
  * an empty class folder, or a class left with no valid pair: the class is dropped.
Conversions (RGBA, 16-bit, CMYK) load the pair and are reported as "converted".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from fewshotseg.data.dataset import DataError, Problem, SegmentationDataset
from fewshotseg.data.images import IMAGE_SUFFIXES, Pair, decode_pairs, report_problems

LAYOUT = "<root>/<class>/<n>.jpg with its mask <n>.png"


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders "2" before "10"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _list_class_folder(folder: Path) -> tuple[dict[str, dict[str, Path]], list[Problem]]:
    """{stem: {suffix (lower case): path}} of the image-like files of a class folder, and what was not one."""
    files: dict[str, dict[str, Path]] = {}
    problems: list[Problem] = []
    for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if path.name.startswith("."):
            continue
        suffix = path.suffix.lower()
        if path.is_dir():
            problems.append(
                Problem(str(path), f"a folder inside a class folder (expected {LAYOUT}): move it out")
            )
        elif suffix not in IMAGE_SUFFIXES:
            problems.append(
                Problem(str(path), "not a .jpg/.jpeg/.png image or mask: move it out of the class folder")
            )
        elif suffix in files.setdefault(path.stem, {}):
            kept = files[path.stem][suffix]
            problems.append(
                Problem(str(path), f"same name as {kept.name} up to letter case; {kept.name} was used")
            )
        else:
            files[path.stem][suffix] = path
    return files, problems


def _duplicates(images: list[Path]) -> list[Problem]:
    return [
        Problem(
            str(extra), f"another image with the same stem as {images[0].name}; {images[0].name} was used"
        )
        for extra in images[1:]
    ]


def pair_class_folder(folder: Path, name: str | None = None) -> tuple[list[Pair], list[Problem]]:
    """The image/mask pairs of one class folder (rules in the module docstring) and the files that did not pair."""
    name = folder.name if name is None else name
    files, problems = _list_class_folder(folder)
    pairs: list[Pair] = []
    taken: set[Path] = set()
    for stem, group in files.items():  # first the explicit convention: <stem>_mask.png
        if not stem.endswith("_mask") or ".png" not in group:
            continue
        mask = group[".png"]
        taken.add(mask)
        base = files.get(stem.removesuffix("_mask"), {})
        images = [base[s] for s in IMAGE_SUFFIXES if s in base]
        if not images:
            problems.append(
                Problem(
                    str(mask),
                    "mask without an image (no same-stem .jpg/.jpeg/.png): add the image or delete the mask",
                )
            )
            continue
        pairs.append(Pair(name, images[0], mask))
        taken.update(images)
        problems += _duplicates(images)
    for group in files.values():  # then FSS-1000's: <stem>.jpg + <stem>.png
        group = {suffix: path for suffix, path in group.items() if path not in taken}
        images = [group[s] for s in (".jpg", ".jpeg") if s in group]
        mask = group.get(".png")
        if images and mask is not None:
            pairs.append(Pair(name, images[0], mask))
        elif images:
            problems.append(
                Problem(
                    str(images[0]),
                    f"image without a mask (no {images[0].stem}.png or {images[0].stem}_mask.png): add the mask or delete the image",
                )
            )
        elif mask is not None:
            problems.append(
                Problem(
                    str(mask), f"mask without an image (no {mask.stem}.jpg): add the image or delete the mask"
                )
            )
        problems += _duplicates(images)
    pairs.sort(key=lambda p: natural_key(p.image.name))
    return pairs, problems


def class_folders(root: Path, classes: Sequence[str] | None = None) -> list[Path]:
    """The class folders of a dataset root (all, or the named ones), with errors that say what the layout is."""
    if not root.is_dir():
        raise DataError(
            f"{root}: no such folder; pass the dataset folder that holds one sub-folder per class ({LAYOUT})"
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is not None:
        missing = sorted(set(classes) - {p.name for p in folders})
        if missing:
            raise DataError(f"{root}: {len(missing)} requested class folder(s) missing: {', '.join(missing)}")
        folders = [p for p in folders if p.name in set(classes)]
    if not folders:
        loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        hint = (
            " It holds images itself: pass its parent folder, or put them in a class sub-folder."
            if loose
            else ""
        )
        raise DataError(f"{root}: no class folders found; expected {LAYOUT}.{hint}")
    return folders


def find_pairs(root: Path | str, classes: Sequence[str] | None = None) -> tuple[list[Pair], list[Problem]]:
    """Every pair of an FSS-layout dataset (or of the named classes) and the problems found while listing."""
    root = Path(root)
    pairs: list[Pair] = []
    problems: list[Problem] = []
    for folder in class_folders(root, classes):
        found, trouble = pair_class_folder(folder)
        problems += trouble
        if found:
            pairs += found
        else:
            what = "holds no image/mask pair" if trouble else "is empty"
            problems.append(Problem(str(folder), f"class folder {what} (expected {LAYOUT})", "dropped"))
    return pairs, problems


def load_folder(
    root: Path | str,
    size: int,
    *,
    strict: bool = False,
    classes: Sequence[str] | None = None,
    progress: bool = True,
) -> SegmentationDataset:
    """Decode an FSS-layout folder (without the cache) at `size` x `size` px; problems are logged once each
    and kept in `dataset.problems`; strict mode raises `DataError` at the first one."""
    root = Path(root).absolute()
    pairs, problems = find_pairs(root, classes)
    dataset = decode_pairs(root, size, pairs, problems, strict=strict, progress=progress)
    report_problems(dataset.problems)
    return dataset
