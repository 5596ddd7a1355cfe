"""A user's own support set and query images, for `fewshotseg adapt`.

A support folder holds labelled pairs in either convention of `fss1000.pair_class_folder`: FSS-style
`<n>.jpg` + `<n>.png`, or `name.jpg` + `name_mask.png`. A folder that holds no images but exactly one sub-folder
(an FSS-1000 class copied with its parent) is read through that sub-folder. Bad pairs are skipped and reported
with the same rules as every dataset; no usable pair at all is a `DataError`.

A support folder of several classes (`multiclass_folder`) is one of two layouts, told apart by its files:

  * indexed masks: the pairs above, each mask a palette or grayscale PNG of class values (0 background, k class k),
    and `classes.txt` naming the values: one name per line, line k naming value k (a first line `background` or
    `_background_` names 0 instead), or `classes.json`: a list of names the same way, or {"value": "name"} for any
    values (e.g. {"8": "cat", "12": "dog"} for PASCAL VOC's palette);
  * one mask per class: `name.jpg` + `name.<class>.png` (a binary mask, as above, for each class the image shows;
    no file: none of that class in it). A `classes.txt` beside them is optional and fixes the classes' order (else
    sorted by name).

Any other folder is a one-class folder, read exactly as above.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
    if not path.exists():
        raise DataError(f"{path}: no such image or folder; pass the images to segment: a folder of .jpg/.jpeg/.png "
                        "images, or one image")
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


# ------------------------------------------------------------------------------------------ several classes

CLASS_FILES = ("classes.txt", "classes.json")
BACKGROUND_NAMES = ("background", "_background_", "__background__")
MULTICLASS_LAYOUTS = ("indexed masks (name.jpg + name.png or name_mask.png with values 0 background, 1, 2, ..., and "
                      "classes.txt naming the values) or one mask per class (name.jpg + name.<class>.png)")


@dataclass
class MultiClassFolder:
    """The pairs of a support folder of several classes, as `MultiClassSegmenter.fit` takes them."""

    layout: str  # "indexed" or "per-class"
    images: list[Path]
    masks: list[Path] | dict[str, list[Path | None]]  # indexed: one per image; per-class: {class: one or None each}
    classes: dict[int, str]  # indexed: mask value -> name; per-class: 1..K -> name in order
    problems: list[Problem] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        """Every input file (images, masks and the classes file)."""
        if isinstance(self.masks, dict):
            masks = [m for ms in self.masks.values() for m in ms if m is not None]
        else:
            masks = list(self.masks)
        return self.images + masks


def check_class_name(name: str, where: str) -> str:
    """A class name as files and outputs use it: not empty, no path separator, not hidden, no control character."""
    if not isinstance(name, str) or not name.strip() or name != name.strip() or name.startswith(".") \
            or any(c in name for c in "/\\") or any(ord(c) < 32 for c in name):
        raise DataError(f"{where}: class name {name!r}: a class name is a non-empty word or phrase without '/', "
                        "'\\', a leading '.' or surrounding spaces")
    return name


def read_classes_file(folder: Path) -> dict[int, str] | None:
    """{mask value: class name} of the folder's classes.txt or classes.json (None: neither is there)."""
    found = [folder / n for n in CLASS_FILES if (folder / n).is_file()]
    if len(found) > 1:
        raise DataError(f"{folder} holds both classes.txt and classes.json: keep one")
    if not found:
        return None
    path = found[0]
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable ({err}); write one class name per line (classes.txt)") from None
    classes: dict[int, str] = {}
    if isinstance(values, dict):
        for key, name in values.items():
            if not (isinstance(key, str) and key.isdigit() and 1 <= int(key) <= 255):
                raise DataError(f"{path}: key {key!r}: keys are the mask values 1..255 of the classes (0 is the "
                                "background), e.g. {\"1\": \"cat\", \"2\": \"dog\"}")
            classes[int(key)] = check_class_name(name, str(path))
    else:
        if values is not None and not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
            raise DataError(f"{path}: expected a list of class names or an object {{\"value\": \"name\"}}")
        names = values if values is not None else [
            line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if names and names[0].lower() in BACKGROUND_NAMES:
            names = names[1:]  # it names value 0
        if len(names) > 255:
            raise DataError(f"{path}: {len(names)} classes; an indexed mask holds at most 255")
        classes = {k: check_class_name(n, str(path)) for k, n in enumerate(names, start=1)}
    if not classes:
        raise DataError(f"{path} names no class: write one class name per line, the first naming mask value 1")
    seen: dict[str, int] = {}
    for value, name in sorted(classes.items()):
        if name in seen:
            raise DataError(f"{path}: the class {name!r} names values {seen[name]} and {value}; name each once")
        seen[name] = value
    return dict(sorted(classes.items()))


def _per_class_masks(files: list[Path]) -> dict[Path, tuple[Path, str]]:
    """{mask file: (its image, class)} of the `name.<class>.png` files: a PNG whose name is an image's stem, a dot,
    and a class (the longest such image stem, when stems hold dots themselves)."""
    candidates = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    images = {p.stem: p for p in sorted(candidates, key=lambda p: (-IMAGE_SUFFIXES.index(p.suffix.lower()), p.name))}
    found = {}
    for p in files:
        if p.suffix.lower() != ".png" or "." not in p.stem:
            continue
        parts = p.stem.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            stem, cls = ".".join(parts[:cut]), ".".join(parts[cut:])
            if stem in images and images[stem] != p:
                found[p] = (images[stem], cls)
                break
    return found


def multiclass_folder(directory: Path | str) -> MultiClassFolder | None:
    """The pairs of a support folder of several classes (layouts in the module docstring), or None for a one-class
    folder. Unpaired files are problems (logged, and returned); a folder that mixes the layouts is a `DataError`."""
    folder = pair_folder(directory)
    files = [p for p in _visible(folder) if p.is_file()]
    per_class = _per_class_masks(files)
    classes = read_classes_file(folder)
    if not per_class and classes is None:
        return None
    if not per_class:  # indexed masks, paired as one-class masks are
        pairs, found = pair_class_folder(folder)
        problems = [p for p in found if Path(p.path).name not in CLASS_FILES]
        assert classes is not None
        if not pairs:
            shown = "".join(f"\n  {p}" for p in problems[:10])
            raise DataError(f"{folder}: no image/mask pair beside its {', '.join(n for n in CLASS_FILES if (folder / n).is_file())}; "
                            f"expected {MULTICLASS_LAYOUTS}.{shown}")
        report_problems(problems)
        return MultiClassFolder("indexed", [p.image for p in pairs], [p.mask for p in pairs], classes, problems)

    images_with_masks = {image for image, _ in per_class.values()}
    problems = []
    single = [p for p in files if p.suffix.lower() == ".png" and p not in per_class and p not in images_with_masks
              and (p.stem.endswith("_mask") or any((folder / f"{p.stem}{s}").is_file() for s in (".jpg", ".jpeg")))]
    if single:
        raise DataError(f"{folder} mixes one mask per class ({next(iter(per_class)).name}) with single masks "
                        f"({single[0].name}): use one layout, {MULTICLASS_LAYOUTS}")
    names = sorted({cls for _, cls in per_class.values()}, key=natural_key)
    if classes is not None:
        unknown = sorted({f"{m.name} ({cls})" for m, (_, cls) in per_class.items() if cls not in classes.values()})
        if unknown:
            raise DataError(f"{folder}: mask(s) of classes not named in its classes file: {', '.join(unknown[:5])}; "
                            "add the class, or rename the file")
        names = list(classes.values())
    for name in names:
        check_class_name(name, str(folder))
    images = sorted(images_with_masks, key=lambda p: natural_key(p.name))
    masks: dict[str, list[Path | None]] = {n: [None] * len(images) for n in names}
    row = {image: i for i, image in enumerate(images)}
    for mask, (image, cls) in sorted(per_class.items()):
        masks[cls][row[image]] = mask
    for p in sorted(files, key=lambda p: natural_key(p.name)):
        if p in per_class or p in images_with_masks or p.name in CLASS_FILES:
            continue
        reason = (f"image without a mask (no {p.stem}.<class>.png): add its class masks or move it out"
                  if p.suffix.lower() in IMAGE_SUFFIXES else "not a .jpg/.jpeg/.png image or mask: move it out")
        problems.append(Problem(str(p), reason))
    report_problems(problems)
    return MultiClassFolder("per-class", images, masks, dict(enumerate(names, start=1)), problems)
