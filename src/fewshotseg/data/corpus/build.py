"""`fewshotseg make-corpus`: a few-shot segmentation corpus of real art and photographs with exact masks.

Every object comes with an alpha channel (icon themes, clip art, Tux Paint's stamps), so its mask is exact. An image
of class c is a photographic background (a random crop), the object of class c pasted at a random scale, position and
mirroring, and 0-2 distractor objects of other classes **of the same split**, pasted behind or in front of it (one in
front hides part of the target, and its pixels are background in the mask). The layout is FSS-1000's plus
`splits.json` (train / val / test classes) and `MANIFEST.json` (sources, versions, licences, and for every image the
files it was made of).

Classes:
* icon concepts (one icon name drawn by >= `min_families` independent theme families) and clip-art categories:
  drawn objects, split into train and val;
* Tux Paint stamp folders of photographs (>= 4 photographs): the **test** classes, real photos never trained on.

Everything follows from the seed and the source packages' versions.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from fewshotseg.data.corpus.sources import Source, Unpacked, by_name, fetch
from fewshotseg.data.dataset import DataError

CORPUS_VERSION = 1

# freedesktop icon contexts that hold objects; mimetypes, apps (logos), emotes (emoji) and animations do not.
ICON_CONTEXTS = {"actions", "devices", "places", "status", "categories"}
ICON_CONTEXT_ALIASES = {"filesystems": "places", "hardware": "devices"}
CLIPART_SKIP = ("unsorted", "special", "logos", "signs_and_symbols/flags", "computer/icons", "shapes/stars")
MAX_PIXELS = 4_000_000
SIZE_DIR = re.compile(r"^(\d+)x(\d+)(@2x)?$")


@dataclass
class CorpusSpec:
    size: int = 224  # stored image side; training resizes from here
    pairs: int = 10  # image/mask pairs per class (FSS-1000's 10)
    seed: int = 0
    val_fraction: float = 0.15  # of the drawn-object classes
    min_families: int = 4  # icon concepts drawn by at least this many independent theme families
    min_instances: int = 4  # clip-art and stamp classes with at least this many distinct objects
    max_distractors: int = 2


@dataclass
class ObjectInstance:
    path: Path  # the RGBA file
    package: str
    family: str = ""

    def provenance(self, roots: dict[str, Path]) -> str:
        return f"{self.package}:{self.path.relative_to(roots[self.package])}"


@dataclass
class CorpusClass:
    name: str
    kind: str  # icon | clipart | stamp-drawing | stamp-photo
    instances: list[ObjectInstance] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- finding objects


def _rgba(path: Path) -> np.ndarray | None:
    """(H, W, 4) uint8 cropped to the object's alpha bounding box; None when there is no usable alpha shape."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            if im.size[0] * im.size[1] > MAX_PIXELS:  # huge posters: slow to decode, nothing gained at 224 px
                return None
            im.load()
            if im.mode not in ("RGBA", "LA", "P", "PA") and "transparency" not in im.info:
                return None
            rgba = np.asarray(im.convert("RGBA"))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    alpha = rgba[..., 3] >= 128
    if alpha.sum() < 64:
        return None
    ys, xs = np.nonzero(alpha)
    crop = rgba[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    filled = (crop[..., 3] >= 128).mean()
    if filled > 0.97:  # an opaque rectangle: no shape to segment
        return None
    return crop


def photo_score(rgba: np.ndarray) -> float:
    """Fraction of neighbouring opaque pixels with a small, nonzero colour difference: the smooth shading of a
    photograph (~0.5-0.7) against the flat fills of a drawing (~0.1-0.3)."""
    rgb = rgba[..., :3].astype(np.int16)
    opaque = rgba[..., 3] >= 128
    diff = np.abs(np.diff(rgb, axis=1)).sum(-1)
    both = opaque[:, 1:] & opaque[:, :-1]
    d = diff[both]
    return float(((d > 0) & (d < 24)).mean()) if d.size else 0.0


def _icon_entries(root: Path) -> dict[tuple[str, str], tuple[int, Path]]:
    """(theme, icon name) -> (pixel size, largest PNG file)."""
    best: dict[tuple[str, str], tuple[int, Path]] = {}
    icons = root / "usr/share/icons"
    if not icons.is_dir():
        return best
    for path in sorted(icons.rglob("*.png")):
        parts = path.relative_to(icons).parts
        theme, rest = parts[0], parts[1:-1]
        context = next((ICON_CONTEXT_ALIASES.get(p, p) for p in rest if ICON_CONTEXT_ALIASES.get(p, p)
                        in ICON_CONTEXTS | {"apps", "mimetypes", "emotes", "animations", "emblems"}), None)
        if context not in ICON_CONTEXTS:
            continue
        name = path.stem
        if name.endswith("-symbolic") or name.startswith("gtk-") or name.startswith("stock_"):
            continue
        size = next((int(m.group(1)) * (2 if m.group(3) else 1) for p in rest if (m := SIZE_DIR.match(p))), 0)
        if size < 32:
            continue
        key = (theme, name)
        if key not in best or size > best[key][0]:
            best[key] = (size, path)
    return best


def find_classes(unpacked: list[Unpacked], spec: CorpusSpec, progress=print) -> list[CorpusClass]:
    classes: list[CorpusClass] = []
    # Icons: one instance per (family, concept), from the family's first theme that has it.
    by_concept: dict[str, dict[str, ObjectInstance]] = defaultdict(dict)
    for u in unpacked:
        if u.source.role != "icons":
            continue
        for (_theme, name), (_size, path) in sorted(_icon_entries(u.root).items()):
            if u.source.family not in by_concept[name] and _rgba(path) is not None:
                by_concept[name][u.source.family] = ObjectInstance(path, u.source.package, u.source.family)
    for name, fams in sorted(by_concept.items()):
        if len(fams) >= spec.min_families:
            classes.append(CorpusClass(f"icon-{name}", "icon", [fams[f] for f in sorted(fams)]))
    # Clip art and stamps: a class is a leaf folder.
    for u in unpacked:
        if u.source.role == "clipart":
            base = u.root / "usr/share/openclipart/png"
            kinds = {"": "clipart"}
        elif u.source.role == "stamps":
            base = u.root / "usr/share/tuxpaint/stamps"
            kinds = {}
        else:
            continue
        if not base.is_dir():
            continue
        folders: dict[Path, list[Path]] = defaultdict(list)
        for path in sorted(base.rglob("*.png")):
            folders[path.parent].append(path)
        for folder, files in sorted(folders.items()):
            rel = folder.relative_to(base).as_posix()
            if u.source.role == "clipart" and (rel == "." or any(rel.startswith(s) for s in CLIPART_SKIP)):
                continue
            if u.source.role == "stamps" and (rel.startswith("symbols") or rel == "."):
                continue
            photos, drawings = [], []
            for path in files:
                rgba = _rgba(path)
                if rgba is None:
                    continue
                inst = ObjectInstance(path, u.source.package)
                if u.source.role == "stamps" and photo_score(rgba) >= 0.4:
                    photos.append(inst)
                else:
                    drawings.append(inst)
            slug = re.sub(r"[^a-z0-9]+", "-", rel.lower()).strip("-")
            prefix = "clipart" if u.source.role == "clipart" else "stamp"
            if len(photos) >= spec.min_instances:
                classes.append(CorpusClass(f"photo-{slug}", "stamp-photo", photos))
            if len(drawings) >= spec.min_instances:
                kind = kinds.get("", "stamp-drawing")
                classes.append(CorpusClass(f"{prefix}-{slug}", kind, drawings))
    counts = defaultdict(int)
    for c in classes:
        counts[c.kind] += 1
    progress("classes: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return classes


def find_backgrounds(unpacked: list[Unpacked], min_side: int) -> list[ObjectInstance]:
    out = []
    for u in unpacked:
        if u.source.role != "backgrounds":
            continue
        for rel in u.source.roots:
            folder = u.root / rel
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                    continue
                try:
                    with Image.open(path) as im:
                        ok = min(im.size) >= min_side
                except OSError:
                    ok = False
                if ok:
                    out.append(ObjectInstance(path, u.source.package))
    return out


def split_classes(classes: list[CorpusClass], spec: CorpusSpec) -> dict[str, list[str]]:
    """Photographed stamp classes are the test split; drawn-object classes are shuffled into train and val."""
    test = sorted(c.name for c in classes if c.kind == "stamp-photo")
    drawn = sorted(c.name for c in classes if c.kind != "stamp-photo")
    rng = np.random.default_rng([spec.seed, 1])
    order = [drawn[i] for i in rng.permutation(len(drawn))]
    n_val = int(round(spec.val_fraction * len(order)))
    return {"train": sorted(order[n_val:]), "val": sorted(order[:n_val]), "test": test}


# --------------------------------------------------------------------------------------------- composing images


class Compositor:
    """Pastes RGBA objects on background crops; objects and backgrounds are decoded once and kept."""

    def __init__(self, size: int):
        self.size = size
        self._objects: dict[Path, np.ndarray] = {}
        self._backgrounds: dict[Path, Image.Image] = {}

    def object(self, path: Path) -> np.ndarray:
        if path not in self._objects:
            rgba = _rgba(path)
            if rgba is None:
                raise DataError(f"{path}: no usable alpha shape")
            h, w = rgba.shape[:2]
            scale = min(1.0, self.size / max(h, w))
            if scale < 1:
                rgba = np.asarray(Image.fromarray(rgba).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                               Image.LANCZOS))
            self._objects[path] = rgba
        return self._objects[path]

    def background(self, path: Path, rng: np.random.Generator) -> np.ndarray:
        if path not in self._backgrounds:
            with Image.open(path) as im:
                img = im.convert("RGB")
                side = 2 * self.size
                if min(img.size) > side:  # keep a bounded copy: crops are at most the shorter side
                    s = side / min(img.size)
                    img = img.resize((round(img.size[0] * s), round(img.size[1] * s)), Image.BILINEAR)
                self._backgrounds[path] = img
        img = self._backgrounds[path]
        w, h = img.size
        crop = int(min(w, h) * rng.uniform(0.45, 1.0))
        x, y = int(rng.integers(0, w - crop + 1)), int(rng.integers(0, h - crop + 1))
        return np.asarray(img.crop((x, y, x + crop, y + crop)).resize((self.size, self.size), Image.BILINEAR))

    def paste(self, canvas: np.ndarray, occupancy: np.ndarray | None, rgba: np.ndarray, rng: np.random.Generator,
              scale: tuple[float, float]) -> np.ndarray:
        """Alpha-composite `rgba` onto `canvas` in place; returns the pasted object's coverage (H, W) in [0, 1]."""
        s = self.size
        h, w = rgba.shape[:2]
        target = rng.uniform(*scale) * s
        f = target / max(h, w)
        nw, nh = max(2, round(w * f)), max(2, round(h * f))
        obj = Image.fromarray(rgba).resize((nw, nh), Image.BILINEAR)
        if rng.random() < 0.5:
            obj = obj.transpose(Image.FLIP_LEFT_RIGHT)
        obj = np.asarray(obj).astype(np.float32)
        # the object's centre anywhere that keeps at least ~3/4 of it inside the image
        cx = rng.uniform(nw * 0.25, s - nw * 0.25) if nw < s else s / 2
        cy = rng.uniform(nh * 0.25, s - nh * 0.25) if nh < s else s / 2
        x0, y0 = int(round(cx - nw / 2)), int(round(cy - nh / 2))
        cover = np.zeros((s, s), np.float32)
        xs, ys = max(0, x0), max(0, y0)
        xe, ye = min(s, x0 + nw), min(s, y0 + nh)
        if xe <= xs or ye <= ys:
            return cover
        part = obj[ys - y0: ye - y0, xs - x0: xe - x0]
        a = part[..., 3:4] / 255.0
        region = canvas[ys:ye, xs:xe].astype(np.float32)
        canvas[ys:ye, xs:xe] = (a * part[..., :3] + (1 - a) * region).round().clip(0, 255).astype(np.uint8)
        cover[ys:ye, xs:xe] = a[..., 0]
        return cover


def compose(comp: Compositor, target: CorpusClass, n: int, others: list[CorpusClass],
            backgrounds: list[ObjectInstance], spec: CorpusSpec, class_index: int,
            roots: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Image n of a class: (image (S, S, 3) uint8, mask (S, S) bool, provenance)."""
    for attempt in range(20):
        rng = np.random.default_rng([spec.seed, class_index, n, attempt])
        bg = backgrounds[int(rng.integers(len(backgrounds)))]
        canvas = comp.background(bg.path, rng).copy()
        # each instance once before any repeats, in a per-class order
        order = np.random.default_rng([spec.seed, class_index]).permutation(len(target.instances))
        inst = target.instances[int(order[(n + attempt) % len(order)])]
        k = int(rng.integers(0, spec.max_distractors + 1)) if others else 0
        picks = []
        for _ in range(k):
            c = others[int(rng.integers(len(others)))]
            picks.append(c.instances[int(rng.integers(len(c.instances)))])
        in_front = [bool(rng.random() < 0.4) for _ in picks]
        for d, front in zip(picks, in_front, strict=True):
            if not front:
                comp.paste(canvas, None, comp.object(d.path), rng, (0.25, 0.5))
        cover = comp.paste(canvas, None, comp.object(inst.path), rng, (0.35, 0.8))
        for d, front in zip(picks, in_front, strict=True):
            if front:
                hidden = comp.paste(canvas, None, comp.object(d.path), rng, (0.2, 0.4))
                cover = cover * (1 - hidden)
        mask = cover >= 0.5
        if mask.mean() >= 0.01:
            record = {"object": inst.provenance(roots), "background": bg.provenance(roots),
                      "distractors": [{"object": d.provenance(roots), "in_front": f}
                                      for d, f in zip(picks, in_front, strict=True)]}
            return canvas, mask, record
    raise DataError(f"class {target.name}: could not place a visible object in 20 attempts")


def make_corpus(out: str | Path, spec: CorpusSpec | None = None, *, cache: str | Path | None = None,
                debs: str | Path | None = None, packages: list[str] | None = None, overwrite: bool = False,
                progress=print) -> dict:
    """Build the corpus into `out`; returns the MANIFEST's summary."""
    spec = spec or CorpusSpec()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out}: folder exists and is not empty; choose a new --out or pass --overwrite")
    cache = Path(cache or os.environ.get("FEWSHOTSEG_CORPUS_CACHE") or Path.home() / ".cache/fewshotseg/corpus")
    sources: list[Source] = by_name(packages)
    if not any(s.role == "backgrounds" for s in sources):
        raise DataError("the corpus needs at least one background source package")
    unpacked = fetch(sources, cache, debs=Path(debs) if debs else None, progress=progress)
    roots = {u.source.package: u.root for u in unpacked}
    classes = find_classes(unpacked, spec, progress)
    backgrounds = find_backgrounds(unpacked, min_side=spec.size // 2)
    if not backgrounds:
        raise DataError("no background photograph found in the background packages")
    splits = split_classes(classes, spec)
    for part in ("train", "test"):
        if not splits[part]:
            raise DataError(f"the sources give no {part} class; check the package list ({', '.join(roots)})")
    split_of = {name: part for part, names in splits.items() for name in names}
    by_split: dict[str, list[CorpusClass]] = defaultdict(list)
    for c in classes:
        by_split[split_of[c.name]].append(c)

    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    comp = Compositor(spec.size)
    images, skipped = [], {}
    for ci, c in enumerate(tqdm(classes, desc="composing classes", unit="class")):
        others = [o for o in by_split[split_of[c.name]] if o.name != c.name]
        try:
            pairs = [compose(comp, c, n, others, backgrounds, spec, ci, roots) for n in range(spec.pairs)]
        except DataError as err:  # e.g. objects that are thin outlines: reported, not written
            skipped[c.name] = str(err)
            continue
        folder = tmp / c.name
        folder.mkdir()
        for n, (image, mask, record) in enumerate(pairs):
            Image.fromarray(image).save(folder / f"{n + 1}.jpg", quality=92)
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{n + 1}.png")
            images.append({"file": f"{c.name}/{n + 1}.jpg", "class": c.name, "split": split_of[c.name], **record})
    for name, why in skipped.items():
        progress(f"skipped class {name}: {why}")
    splits = {part: [n for n in names if n not in skipped] for part, names in splits.items()}
    classes = [c for c in classes if c.name not in skipped]
    manifest = {
        "corpus_version": CORPUS_VERSION,
        "spec": asdict(spec),
        "sources": [{"package": u.source.package, "version": u.version, "role": u.source.role,
                     "family": u.source.family, "licences": u.licences, "deb": u.deb.name} for u in unpacked],
        "classes": {c.name: {"kind": c.kind, "split": split_of[c.name], "instances": len(c.instances)}
                    for c in classes},
        "splits": {k: len(v) for k, v in splits.items()},
        "backgrounds": len(backgrounds),
        "skipped_classes": skipped,
        "images": images,
    }
    (tmp / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    summary = {k: manifest[k] for k in ("corpus_version", "splits", "backgrounds")}
    summary["images"] = len(images)
    progress(f"wrote {len(images)} pairs of {len(classes)} classes "
             f"(train {len(splits['train'])}, val {len(splits['val'])}, test {len(splits['test'])}) to {out}")
    return summary
