"""Pixels from files: one image or mask file, then a list of image/mask pairs into a `SegmentationDataset`.

Real datasets are messy, so every rule below is explicit and every file that breaks one becomes a `Problem`
(skipped, or loaded after a conversion) or, in strict mode, a `DataError`.

Images (`read_image`) become (H, W, 3) uint8 RGB:
  * grayscale, 1-bit and palette images are converted silently;
  * RGBA/LA/PA (and palette images with a transparent colour) lose their alpha channel: the colour channels
    are kept as stored, so a mask drawn on the visible picture still lines up. Reported as "converted";
  * 16-bit grayscale is scaled to 8 bit (see `_to_8bit`) and CMYK is converted to RGB. Reported as "converted";
  * EXIF orientation is NOT applied by dataset loaders (masks match the stored pixel grid, as FSS-1000 and PASCAL
    store them); `adapt` and `FewShotSegmenter` ask for it (`exif=True`), since phone photos rely on it;
  * a corrupt, truncated or non-image file raises. PIL's `ImageFile.LOAD_TRUNCATED_IMAGES` stays False and
    every file is fully decoded with `.load()`, so half a picture never loads silently.

Masks (`read_mask`) become (H, W) uint8 in {0, 1}. First the pixel values are taken:
  * palette PNGs: the palette INDEX values (a palette mask with indices {0, 1} is a 0/1 mask);
  * grayscale: the values; RGB/RGBA: the maximum over the three colour channels (so a red, green or white
    object on black is foreground; alpha is ignored); LA: the gray channel;
  * 16-bit: scaled to 8 bit (see `_to_8bit`) before anything is decided.
Then the scale is decided (the mask scale rule):
  * max value <= 1: a 0/1 mask, every nonzero pixel is foreground;
  * otherwise a 0/255 mask thresholded at 128. Anti-aliased edges are fine. The mask is NOT binary, and is
    rejected, when more than 2 % of its pixels hold values strictly between 0 and 255 farther than 3 px from an
    edge of the thresholded mask: e.g. values {0, 7, 255} where 7 fills a region, or a multi-class {0, 1, 2}
    label map. Guessing which of those values mean "object" would silently teach the wrong thing.

A pair (`decode_pair`) is then rejected when the mask's size differs from the image's, when the mask has no
foreground at all (a support image with no foreground teaches nothing), when the pair carries no signal (`no_signal`:
an image under 8 px a side, a mask with no background, a mask of noise) or when its foreground vanishes after
resizing. Images are resized (squashed, never cropped) to S x S with antialiased bilinear filtering, masks with
nearest neighbour so they stay binary.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from fewshotseg.data.dataset import IGNORE, DataError, Problem, SegmentationDataset
from fewshotseg.errors import UserError

log = logging.getLogger("fewshotseg.data")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NONBINARY_FRACTION = 0.02  # share of off-edge intermediate pixels above which a mask is "not binary"
EDGE_RADIUS = 3  # px around a thresholded edge where intermediate values count as anti-aliasing
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class BadFile(DataError):
    """A `DataError` about one file that keeps the path and the reason apart, so a loader can record a `Problem`."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _open(path: Path, exif: bool = False) -> Image.Image:
    """Open and fully decode a file; every decoding failure becomes a `BadFile` that says what to do. With `exif`,
    the picture is turned upright by its EXIF orientation tag (photos from phones and cameras)."""
    try:
        img = Image.open(path)
        img.load()  # decode now: a truncated file must fail here, not show up later as grey pixels
        if exif:
            img = ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise BadFile(path, "file not found; check the path") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadFile(
            path,
            f"cannot decode it ({err}); the file is corrupt, truncated or not an image: "
            "re-download or re-export it, or delete it",
        ) from None
    return img


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """16/32-bit integer pixels to uint8: full-range data (max > 255) is scaled by 255/65535; data that already
    fits in 0..255 (an 8-bit mask or label map stored in a 16-bit file) is kept as is, since scaling it would
    turn a 0/1 mask into all zeros."""
    values = np.clip(values, 0, 65535).astype(np.uint32)
    if values.max(initial=0) > 255:
        values = (values * 255 + 32767) // 65535
    return values.astype(np.uint8)


def read_image(path: Path | str, notes: list[Problem] | None = None, *, exif: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of a .jpg/.jpeg/.png file; conversions worth knowing are appended to `notes`.
    `exif`: turn the picture upright by its EXIF orientation (what `adapt` does with users' photos)."""
    path = Path(path)
    img = _open(path, exif)
    with img:
        mode = img.mode
        note = None
        if mode.startswith("I"):  # 16-bit (I;16, I;16B) or 32-bit integer grayscale
            gray = _to_8bit(np.asarray(img))
            rgb = np.repeat(gray[..., None], 3, axis=2)
            note = f"{mode} (16-bit) image converted to 8-bit RGB"
        elif mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
            rgb = np.asarray(img.convert("RGBA"))[..., :3]
            note = f"{mode} image with transparency: alpha channel dropped, colours kept as stored"
        elif mode in ("RGB", "L", "1", "P", "YCbCr"):
            rgb = np.asarray(img.convert("RGB"))
        elif mode == "CMYK":
            rgb = np.asarray(img.convert("RGB"))
            note = "CMYK image converted to RGB (colours may shift slightly)"
        else:
            raise BadFile(path, f"unsupported image mode {mode}; save it as an 8-bit RGB JPEG or PNG")
    if note is not None and notes is not None:
        notes.append(Problem(str(path), note, "converted"))
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _mask_values(img: Image.Image, path: Path, notes: list[Problem] | None) -> np.ndarray:
    """(H, W) uint8 values of a mask file before the scale is decided (see the module docstring)."""
    mode = img.mode
    if mode in ("P", "L"):
        return np.asarray(img, dtype=np.uint8)  # palette: the INDEX values, never the palette colours
    if mode in ("1", "LA", "La"):
        return np.asarray(img.getchannel(0), dtype=np.uint8)
    if mode == "PA":
        return np.asarray(img, dtype=np.uint8)[..., 0]
    if mode in ("RGB", "RGBA", "RGBa"):
        return np.asarray(img, dtype=np.uint8)[..., :3].max(axis=2)
    if mode.startswith("I"):
        raw = np.asarray(img)
        if raw.max(initial=0) > 255 and notes is not None:
            notes.append(Problem(str(path), f"{mode} (16-bit) mask scaled to 8 bit", "converted"))
        return _to_8bit(raw)
    raise BadFile(path, f"unsupported mask mode {mode}; save the mask as an 8-bit grayscale or palette PNG")


def _edge_band(foreground: np.ndarray) -> np.ndarray:
    """Pixels within EDGE_RADIUS of a foreground/background transition: where anti-aliasing lives."""
    img = Image.fromarray(foreground.astype(np.uint8) * 255)
    width = 2 * EDGE_RADIUS + 1
    grown = np.asarray(img.filter(ImageFilter.MaxFilter(width)))
    shrunk = np.asarray(img.filter(ImageFilter.MinFilter(width)))
    return grown != shrunk


def binarize_mask(values: np.ndarray, path: Path | str) -> np.ndarray:
    """Apply the mask scale rule to (H, W) uint8 values: {0, 1} mask out, `BadFile` when it isn't binary."""
    if values.max(initial=0) <= 1:
        return (values > 0).astype(np.uint8)
    foreground = values >= 128
    intermediate = (values > 0) & (values < 255)
    limit = NONBINARY_FRACTION * values.size
    if intermediate.sum() > limit:  # cheap test first: clean masks never reach the filter below
        off_edge = intermediate & ~_edge_band(foreground)
        if off_edge.sum() > limit:
            seen = ", ".join(str(v) for v in np.unique(values)[:8])
            raise BadFile(
                path,
                f"mask is not binary: {100 * off_edge.mean():.1f} % of its pixels hold values strictly between "
                f"0 and 255 away from object edges (values include {seen}). Expected a 0/1 or 0/255 mask "
                "(anti-aliased edges are fine): re-export it with background 0 and foreground 255",
            )
    return foreground.astype(np.uint8)


def read_mask(path: Path | str, notes: list[Problem] | None = None, *, exif: bool = False) -> np.ndarray:
    """(H, W) uint8 mask in {0, 1} of a mask file, by the rules in the module docstring (`exif`: as read_image)."""
    path = Path(path)
    with _open(path, exif) as img:
        values = _mask_values(img, path, notes)
    return binarize_mask(values, path)


def read_label(path: Path | str) -> np.ndarray:
    """(H, W) uint8 class indices of an index PNG (PASCAL's SegmentationClassAug: palette or grayscale)."""
    path = Path(path)
    with _open(path) as img:
        if img.mode not in ("P", "L"):
            raise BadFile(
                path,
                f"label map is {img.mode}, expected a palette or grayscale PNG of class indices "
                "(SegmentationClassAug); colour-coded labels must be converted to indices first",
            )
        return np.asarray(img, dtype=np.uint8)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Squash (H, W, 3) to (size, size, 3): bilinear, which PIL antialiases when shrinking."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Squash an (H, W) {0, 1} mask to (size, size) with nearest neighbour, so it stays binary."""
    if mask.shape == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


@dataclass(frozen=True)
class Pair:
    """One example to decode: an image, its mask file, and the class it belongs to."""

    name: str  # class name
    image: Path
    mask: Path
    label: int | None = (
        None  # index masks (PASCAL): foreground = pixels equal to this; None: a binary mask file
    )
    ignore: int | None = None  # index masks: pixels equal to this become IGNORE (PASCAL's boundary band, 255)
    # COCO: the mask is the union of these annotations' segmentations (polygons or RLE) on an image of
    # `shape` (height, width); `mask` then names the annotation file, for messages.
    segments: tuple = field(default=(), compare=False)
    shape: tuple[int, int] | None = None


@dataclass
class DecodedPair:
    image: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) uint8 in {0, 1}
    original_size: tuple[int, int]  # (height, width) before resizing
    notes: list[Problem]
    original: dict | None = None  # the mask at the original size, run-length encoded (see SegmentationDataset)


def encode_original(mask: np.ndarray) -> dict:
    """A {0, 1, IGNORE} mask at its original size as COCO run-length encodings (pycocotools)."""
    from pycocotools import mask as rle

    def counts(binary: np.ndarray) -> str:
        return rle.encode(np.asfortranarray(binary.astype(np.uint8)))["counts"].decode("ascii")

    ignored = mask == IGNORE
    return {"size": list(mask.shape), "fg": counts(mask == 1), "ignore": counts(ignored) if ignored.any() else None}


def decode_original(original: dict) -> np.ndarray:
    """The (H, W) uint8 {0, 1, IGNORE} mask of `encode_original`."""
    from pycocotools import mask as rle

    size = original["size"]
    mask = rle.decode({"size": size, "counts": original["fg"].encode("ascii")}).astype(np.uint8)
    if original.get("ignore"):
        mask[rle.decode({"size": size, "counts": original["ignore"].encode("ascii")}).astype(bool)] = IGNORE
    return mask


def segments_mask(segments: Sequence, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 {0, 1}: the union of COCO segmentations (polygon lists, uncompressed or compressed RLE)."""
    from pycocotools import mask as rle

    parts = []
    for seg in segments:
        if isinstance(seg, list):  # polygons: [[x1, y1, x2, y2, ...], ...]
            parts += rle.frPyObjects(seg, height, width)
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE (crowd annotations)
            parts.append(rle.frPyObjects(seg, height, width))
        else:  # compressed RLE
            parts.append(seg)
    if not parts:
        return np.zeros((height, width), np.uint8)
    return rle.decode(rle.merge(parts)).astype(np.uint8)


def decode_pair(pair: Pair, size: int, *, keep_original: bool = False) -> DecodedPair:
    """Read, check and resize one pair; raises `BadFile` naming the file at fault. `keep_original` also
    run-length encodes the mask at the image's own size."""
    notes: list[Problem] = []
    image = read_image(pair.image, notes)
    if pair.shape is not None:
        try:
            mask = segments_mask(pair.segments, *pair.shape)
        except (ValueError, TypeError, KeyError) as err:
            raise BadFile(pair.mask, f"unreadable segmentation for {pair.image.name} ({err})") from None
    elif pair.label is None:
        mask = read_mask(pair.mask, notes)
    else:
        label = read_label(pair.mask)
        mask = (label == pair.label).astype(np.uint8)
        if pair.ignore is not None:
            mask[label == pair.ignore] = IGNORE
    if mask.shape != image.shape[:2]:
        (h, w), (ih, iw) = mask.shape, image.shape[:2]
        raise BadFile(
            pair.mask,
            f"mask is {w}x{h} px but its image {pair.image.name} is {iw}x{ih}; a mask must match its image "
            "pixel for pixel: re-export the mask at the image's size",
        )
    if not (mask == 1).any():
        raise BadFile(
            pair.mask,
            "mask has no foreground pixels (a support image with no foreground teaches nothing): "
            "fix the mask or delete the pair",
        )
    reason = no_signal(image.shape[:2], mask)
    if reason is not None:
        raise BadFile(pair.image if reason.startswith("the image") else pair.mask, reason)
    small = resize_mask(mask, size)
    if not (small == 1).any():
        raise BadFile(
            pair.mask,
            f"its {int(mask.sum())} foreground pixels vanish when the mask is resized to {size} px: "
            "use a larger --size or drop the pair",
        )
    original = encode_original(mask) if keep_original else None
    return DecodedPair(resize_image(image, size), small, (image.shape[0], image.shape[1]), notes, original)


MIN_SIDE = 8  # px: a smaller image cannot show an object and its background
NOISE_TRANSITIONS = 0.2  # share of neighbouring pixel pairs that differ: real masks stay below 0.03
NOISE_ISOLATED = 0.5  # share of foreground pixels with no foreground neighbour: real masks stay below 0.03


def no_signal(shape: tuple[int, int], mask: np.ndarray) -> str | None:
    """Why an image of `shape` (H, W) with its (H, W) mask ({0, 1}, or {0, 1, IGNORE}) teaches nothing, or None:
    an image smaller than MIN_SIDE px, a mask with no background, or a mask of noise rather than an object. The
    thresholds leave real masks a wide margin (the fixtures' photos, the built-in benchmark: below 3 %)."""
    h, w = shape
    if min(h, w) < MIN_SIDE:
        return (f"the image is {w}x{h} px, too small to show an object and its background (at least {MIN_SIDE}x"
                f"{MIN_SIDE} px): use the full-size photo, or leave the pair out")
    fg, bg = mask == 1, mask == 0
    if not bg.any():
        return ("its mask marks every pixel as the object: with no background it says nothing about where the object "
                "ends; mark only the object (background 0), or leave the pair out")
    differ = (fg[:, 1:] != fg[:, :-1]).sum() + (fg[1:] != fg[:-1]).sum()
    transitions = differ / (fg[:, 1:].size + fg[1:].size)
    padded = np.pad(fg, 1)
    alone = fg & ~(padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:])
    isolated = alone.sum() / max(fg.sum(), 1)
    if transitions > NOISE_TRANSITIONS or (fg.sum() >= 20 and isolated > NOISE_ISOLATED):
        return (f"its mask looks like noise, not an object ({100 * transitions:.0f} % of neighbouring pixels differ, "
                f"{100 * isolated:.0f} % of its object pixels touch no other): was another file saved as the mask? "
                "Export the object's mask (its region white, background 0), or leave the pair out")
    return None


def strict_error(problem: Problem) -> DataError:
    return DataError(
        f"{problem}\n(strict mode stops at the first problem; without --strict such files are skipped and "
        "each one is reported)"
    )


def report_problems(problems: Iterable[Problem]) -> None:
    """Log each problem once as a warning (stderr unless logging is configured otherwise)."""
    for problem in problems:
        log.warning("%s: %s", problem.action, problem)


def _decode_or_problem(pair: Pair, size: int, keep_original: bool) -> DecodedPair | Problem:
    try:
        return decode_pair(pair, size, keep_original=keep_original)
    except BadFile as err:
        return Problem(err.path, err.reason, "skipped")


def decode_pairs(
    root: Path,
    size: int,
    pairs: Sequence[Pair],
    problems: Sequence[Problem] = (),
    *,
    strict: bool = False,
    progress: bool = True,
    workers: int | None = None,
    originals: bool = False,
) -> SegmentationDataset:
    """Decode pairs into one `SegmentationDataset`, classes in sorted order, each a contiguous block of rows.

    `problems` are those already found while listing files. Default mode skips every bad pair and records it;
    strict mode raises at the first problem. Nothing is logged here: the caller reports the problems once.
    PIL releases the GIL while decoding and resizing, so a small thread pool gives a near-linear speed-up.
    `originals` keeps every mask at its original size too (run-length encoded), for scoring at that size.
    """
    problems = list(problems)
    if strict and problems:
        raise strict_error(problems[0])
    pairs = sorted(pairs, key=lambda p: p.name)  # stable: each class keeps the order its loader chose
    images = np.empty((len(pairs), size, size, 3), np.uint8)
    masks = np.empty((len(pairs), size, size), np.uint8)
    original_sizes = np.empty((len(pairs), 2), np.int32)
    kept: list[Pair] = []
    kept_originals: list[dict] = []
    pool = ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1))
    results = pool.map(lambda pair: _decode_or_problem(pair, size, originals), pairs)
    bar = tqdm(
        results, total=len(pairs), desc=f"decoding {root.name or root}", unit="pair", disable=not progress
    )
    try:
        for pair, result in zip(pairs, bar, strict=True):
            found = [result] if isinstance(result, Problem) else result.notes
            if strict and found:
                raise strict_error(found[0])
            problems.extend(found)
            if isinstance(result, DecodedPair):
                row = len(kept)
                images[row], masks[row], original_sizes[row] = result.image, result.mask, result.original_size
                kept.append(pair)
                if originals:
                    kept_originals.append(result.original)
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)

    offsets: dict[str, tuple[int, int]] = {}
    for row, pair in enumerate(kept):
        start, count = offsets.get(pair.name, (row, 0))
        offsets[pair.name] = (start, count + 1)
    for name in sorted({p.name for p in pairs} - set(offsets)):
        problems.append(
            Problem(str(root / name), "none of its pairs is usable (see the problems above)", "dropped")
        )
    if not kept:
        shown = "\n  ".join(str(p) for p in problems[:5])
        raise DataError(
            f"{root}: no usable image/mask pair among {len(pairs)} candidates. First problems:\n  {shown}"
        )
    n = len(kept)
    return SegmentationDataset(
        root=root,
        size=size,
        names=sorted(offsets),
        images=images[:n],
        masks=masks[:n],
        offsets=offsets,
        files=[os.path.relpath(p.image, root) for p in kept],
        problems=problems,
        original_sizes=original_sizes[:n],
        originals=kept_originals if originals else None,
    )


# ------------------------------------------------------------------------------------------ users' images

ImageLike = str | Path | Image.Image | np.ndarray  # what FewShotSegmenter and the page accept as an image or mask


def load_image(x: ImageLike, name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, upright by its EXIF orientation."""
    if isinstance(x, (str, Path)):
        return read_image(x, exif=True)
    if isinstance(x, Image.Image):
        return np.asarray(ImageOps.exif_transpose(x).convert("RGB"))
    if isinstance(x, np.ndarray):
        a = x
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise UserError(f"{name}: an image array must be (H, W, 3) or (H, W); got shape {x.shape}")
        a = a[..., :3]
        if a.dtype != np.uint8:
            if not np.issubdtype(a.dtype, np.floating) or a.min() < 0 or a.max() > 1:
                raise UserError(f"{name}: a non-uint8 image array must be float in [0, 1] (got {a.dtype})")
            a = (a * 255).round().astype(np.uint8)
        return np.ascontiguousarray(a)
    raise UserError(f"{name}: expected a path, a PIL image or a numpy array, got {type(x).__name__}")


def read_pair(image: ImageLike, mask: ImageLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(upright (H, W, 3) uint8 image, (H, W) bool mask on the same grid) of one labelled example."""
    rgb = load_image(image, name)
    return rgb, _oriented_mask(mask, rgb.shape[:2], image, name)


def mask_on_image(mask: ImageLike, shape: tuple[int, int], image: ImageLike, name: str) -> np.ndarray:
    """(H, W) bool binary mask on the grid of `image`, whose upright size is `shape` (see `_oriented_mask`)."""
    return _oriented_mask(mask, shape, image, name)


def _oriented_mask(mask: ImageLike, shape: tuple[int, int], image: ImageLike, name: str) -> np.ndarray:
    """(H, W) bool mask on the upright image's grid.

    A mask file with its own EXIF orientation is turned by it. A mask without one is taken as drawn on the upright
    picture (what a viewer or labelling tool shows) when its size is the upright image's; when instead its size is
    the image's stored pixel grid, the image's EXIF orientation is applied to it too."""
    if isinstance(mask, (str, Path)):
        m = read_mask(mask, exif=True).astype(bool)
    elif isinstance(mask, Image.Image):
        m = binarize_mask(np.asarray(ImageOps.exif_transpose(mask).convert("L")), name).astype(bool)
    elif isinstance(mask, np.ndarray):
        values = mask.max(axis=2) if mask.ndim == 3 else mask
        if values.ndim != 2:
            raise UserError(f"{name}: a mask array must be (H, W); got shape {mask.shape}")
        m = values.astype(bool) if values.dtype == bool else binarize_mask(values.astype(np.uint8), name).astype(bool)
    else:
        raise UserError(f"mask of {name}: expected a path, a PIL image or a numpy array, got {type(mask).__name__}")
    return _on_image_grid(m, image, shape, name, Path(mask).name if isinstance(mask, (str, Path)) else "")


def _on_image_grid(m: np.ndarray, image: ImageLike, shape: tuple[int, int], name: str,
                   mask_name: str = "") -> np.ndarray:
    """A mask at its upright image's size: as it is, or drawn on the stored (unrotated) grid and turned upright."""
    if m.shape == shape:
        return m
    if m.shape == shape[::-1] and isinstance(image, (str, Path, Image.Image)):
        turned = _apply_orientation(m, image)
        if turned.shape == shape:
            return turned
    which = f" (the mask file {mask_name})" if mask_name else ""
    raise UserError(f"{name}: mask is {m.shape[1]}x{m.shape[0]} px but the image is {shape[1]}x{shape[0]} px{which}; "
                    "a mask must have its image's size")


def _apply_orientation(mask: np.ndarray, image: str | Path | Image.Image) -> np.ndarray:
    """Turn a mask (bool, or uint8 class indices) drawn on the image's stored pixel grid the way the image's EXIF
    orientation turns the image."""
    im = Image.open(image) if isinstance(image, (str, Path)) else image
    try:
        orientation = im.getexif().get(0x0112, 1)
    finally:
        if im is not image:
            im.close()
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}.get(orientation)
    if method is None:
        return mask
    turned = np.asarray(Image.fromarray(mask.astype(np.uint8)).transpose(method))  # a transpose moves, never mixes
    return turned.astype(mask.dtype)


def read_label_map(labels: ImageLike, image: ImageLike, shape: tuple[int, int], name: str) -> np.ndarray:
    """(H, W) uint8 class indices of an indexed mask (0 = background, k = class k) on the upright image's grid.

    A file or PIL image must be a palette PNG (its INDEX values, never the colours) or grayscale (the values, 16-bit
    ones kept when they fit in 0..255); an array must be (H, W) integers in 0..255. Turned upright as binary masks
    are (`_oriented_mask`)."""
    if isinstance(labels, (str, Path, Image.Image)):
        img = _open(Path(labels), exif=True) if isinstance(labels, (str, Path)) else ImageOps.exif_transpose(labels)
        where = str(labels) if isinstance(labels, (str, Path)) else name
        with img:
            if img.mode not in ("P", "L") and not img.mode.startswith("I"):
                raise BadFile(where, f"an indexed mask must be a palette or grayscale PNG of class values (0 "
                              f"background, 1, 2, ... the classes); this one is {img.mode}: export it as an 8-bit "
                              "palette or grayscale PNG")
            values = np.asarray(img)
        if values.max(initial=0) > 255 or values.min(initial=0) < 0:
            raise BadFile(where, f"class values up to {values.max()}: an indexed mask holds values 0..255")
        m = values.astype(np.uint8)
    elif isinstance(labels, np.ndarray):
        if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise UserError(f"{name}: an indexed mask array must be (H, W) integers; got {labels.dtype} "
                            f"{labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise UserError(f"{name}: an indexed mask holds class values 0..255; got {labels.min()}..{labels.max()}")
        m = labels.astype(np.uint8)
    else:
        raise UserError(f"mask of {name}: expected a path, a PIL image or a numpy array, got {type(labels).__name__}")
    return _on_image_grid(m, image, shape, name)
