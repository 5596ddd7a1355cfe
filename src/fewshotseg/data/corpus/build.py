"""`fewshotseg make-corpus`: a few-shot segmentation corpus of real art and photographs with exact masks.

Every object comes with an alpha channel (icon themes, clip art, Tux Paint's stamps), so its mask is exact. An image
of class c is a random crop of a background photograph **from c's split's background pool**, the object of class c
pasted at a random scale, position and mirroring, and 0-2 distractor objects of other classes **of the same split**,
pasted behind or in front of it (one in front hides part of the target, and its pixels are background in the mask).
The layout is FSS-1000's plus `splits.json` (train / val / test classes) and `MANIFEST.json` (sources, versions,
licences, the split rules' outcome, and for every image the files it was made of).

Classes:
* icon concepts (one icon name drawn by >= `min_families` independent theme families) and clip-art categories:
  drawn objects;
* Tux Paint stamp folders: the photographs of a folder (>= `min_instances`) are a real-photo class `photo-<folder>`,
  its drawings a drawn class `stamp-<folder>`.

Version 2's split rules (every random choice from a numpy Generator seeded with `seed`):
1. Backgrounds: the distinct background files (identical bytes counted once) are shuffled and partitioned into a
   test pool (`background_test_fraction`, >= 1), a val pool (`background_val_fraction`, >= 1) and a train pool (the
   rest); a val or test image never shows a background that any train image (or the other held-out split) uses.
2. One concept, one side. A name's *words* are its lower-case letter runs (>= 2 letters), singularised simply (see
   `singular`, `WORD_FORMS`), minus a few generic words (`GENERIC_WORDS`); a class's *keywords* are the words of
   its icon name, or of its whole folder path and of its files' names. A photo class's *concept* is the words of
   its folder path below the top-level category folder (`animals/birds/cartoon` -> {bird},
   `hobbies/music/string` -> {music, string}, `sports` -> {sport}). A class (drawn or photo) is tied to photo
   class p when its keywords meet p's concept, or when it comes from p's stamp folder; tied classes form concept
   groups (connected components) that move together.
3. Photo val / test: the concept groups that hold photo classes are shuffled; a group goes to val while val's photo
   classes stay within `photo_val_fraction` of all photo classes (at least 1 when there are >= 2 groups), the other
   groups to test. Every class of a group, drawn ones included, takes its group's side, so "val" and "test" can
   hold drawn classes too; `MANIFEST.json`'s `photo_splits` names the real-photo classes of each.
4. The drawn classes tied to no photo class are shuffled into train and val (`val_fraction` to val).
5. A check then recomputes every tie and fails the build (`DataError` naming the classes) when two tied classes
   are on different sides; `MANIFEST.json` records the concept groups and the check's `overlaps` (empty).

Everything follows from the seed and the source packages' versions.
"""

from __future__ import annotations

import hashlib
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

CORPUS_VERSION = 2

# freedesktop icon contexts that hold objects; mimetypes, apps (logos), emotes (emoji) and animations do not.
ICON_CONTEXTS = {"actions", "devices", "places", "status", "categories"}
ICON_CONTEXT_ALIASES = {"filesystems": "places", "hardware": "devices"}
CLIPART_SKIP = ("unsorted", "special", "logos", "signs_and_symbols/flags", "computer/icons", "shapes/stars")
MAX_PIXELS = 4_000_000
SIZE_DIR = re.compile(r"^(\d+)x(\d+)(@2x)?$")
# words that name no concept: a photo class in `x/cartoon` is about x, and "and" ties nothing
GENERIC_WORDS = frozenset({"and", "the", "of", "with", "for", "in", "on", "an", "other", "misc", "miscellany",
                           "cartoon"})
# irregular plurals, and the few synonyms the folder names use, mapped to one word
WORD_FORMS = {"mice": "mouse", "geese": "goose", "feet": "foot", "teeth": "tooth", "people": "person",
              "children": "child", "leaves": "leaf", "knives": "knife", "clothes": "clothing", "bug": "insect",
              "bugs": "insect", "astronomy": "planet"}
SPLITS = ("train", "val", "test")


@dataclass
class CorpusSpec:
    """What `make-corpus` builds: image size, pairs per class, seed, the drawn classes' validation share, and the
    thresholds that make a class."""

    size: int = 224  # stored image side; training resizes from here
    pairs: int = 10  # image/mask pairs per class (FSS-1000's 10)
    seed: int = 0
    val_fraction: float = 0.15  # of the drawn-object classes tied to no photo class
    photo_val_fraction: float = 1 / 3  # of the photo classes, in whole concept groups; the rest are test
    background_val_fraction: float = 0.2  # of the background photographs (at least one)
    background_test_fraction: float = 0.2  # of the background photographs (at least one)
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
    path: str = ""  # the icon name, or the folder inside the package's clip-art / stamp root
    package: str = ""


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
            classes.append(CorpusClass(f"icon-{name}", "icon", [fams[f] for f in sorted(fams)], name))
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
                classes.append(CorpusClass(f"photo-{slug}", "stamp-photo", photos, rel, u.source.package))
            if len(drawings) >= spec.min_instances:
                kind = kinds.get("", "stamp-drawing")
                classes.append(CorpusClass(f"{prefix}-{slug}", kind, drawings, rel, u.source.package))
    counts = defaultdict(int)
    for c in classes:
        counts[c.kind] += 1
    progress("classes: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return classes


def find_backgrounds(unpacked: list[Unpacked], min_side: int) -> list[ObjectInstance]:
    """The background photographs with a shorter side >= `min_side`; a file whose bytes repeat an earlier one is
    left out, so that one picture cannot land in two splits' pools."""
    out, seen = [], set()
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
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if ok else ""
                if ok and digest not in seen:
                    seen.add(digest)
                    out.append(ObjectInstance(path, u.source.package))
    return out


def split_backgrounds(backgrounds: list[ObjectInstance], spec: CorpusSpec) -> dict[str, list[ObjectInstance]]:
    """Seeded partition of the backgrounds into disjoint train / val / test pools (val and test get >= 1 each)."""
    n = len(backgrounds)
    if n < 3:
        raise DataError(f"{n} background photograph(s) found in the background packages; the corpus needs at least "
                        f"3 (one pool per split): add a background source package to --packages, or leave "
                        f"--packages out to use them all")
    n_test = min(n - 2, max(1, round(spec.background_test_fraction * n)))
    n_val = min(n - 1 - n_test, max(1, round(spec.background_val_fraction * n)))
    order = [backgrounds[i] for i in np.random.default_rng([spec.seed, 3]).permutation(n)]
    return {"train": order[n_test + n_val:], "val": order[n_test: n_test + n_val], "test": order[:n_test]}


# --------------------------------------------------------------------------------------------- splitting classes


def singular(word: str) -> str:
    """A simple singular: `WORD_FORMS`, then -ies -> -y, -sses/-ches/-shes/-xes/-zes -> drop -es, words ending in
    -ss/-us/-is/-as/-ics unchanged, otherwise a final -s dropped (words of <= 3 letters are kept as they are)."""
    if word in WORD_FORMS:
        return WORD_FORMS[word]
    if len(word) <= 3:
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes", "zes")):
        return word[:-2]
    if word.endswith(("ss", "us", "is", "as", "ics")):
        return word
    return word[:-1] if word.endswith("s") else word


def words(text: str) -> frozenset[str]:
    """The concept words of a name or path: lower-case letter runs of >= 2 letters, singularised, generic words
    left out."""
    found = (singular(w) for w in re.findall(r"[a-z]{2,}", text.lower()))
    return frozenset(w for w in found if w not in GENERIC_WORDS)


def keywords(c: CorpusClass) -> frozenset[str]:
    """A class's keywords: the words of its icon name, or of its whole folder path and of its files' names (a
    clip-art `food` folder holding `turkey_platter_with_fruit_and_vegitables.png` names fruit)."""
    if c.kind == "icon":
        return words(c.path)
    return words(c.path).union(*(words(i.path.stem) for i in c.instances))


def concept(c: CorpusClass) -> frozenset[str]:
    """A photo class's concept: the words of its folder path below the top-level category folder (`animals`,
    `food`, ...), or of the top-level folder itself when the class is one (`animals/birds/cartoon` -> {bird},
    `hobbies/music/string` -> {music, string}, `sports` -> {sport})."""
    parts = c.path.split("/")
    return words("/".join(parts[1:])) or words(c.path)


def concept_ties(classes: list[CorpusClass]) -> list[tuple[str, str]]:
    """(photo class, other class) for every class tied to a photo class: its keywords meet the photo class's
    concept, or both come from the same stamp folder."""
    ties = []
    known = {c.name: keywords(c) for c in classes}
    for p in classes:
        if p.kind != "stamp-photo":
            continue
        wanted = concept(p)
        for c in classes:
            same_folder = c.kind.startswith("stamp") and (c.package, c.path) == (p.package, p.path)
            if c.name != p.name and (same_folder or known[c.name] & wanted):
                ties.append((p.name, c.name))
    return ties


def concept_groups(classes: list[CorpusClass]) -> list[list[str]]:
    """The connected components of the ties that hold a photo class, each sorted, in order of their first name."""
    parent = {c.name: c.name for c in classes}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for a, b in concept_ties(classes):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[str, list[str]] = defaultdict(list)
    for c in classes:
        members[root(c.name)].append(c.name)
    photos = {c.name for c in classes if c.kind == "stamp-photo"}
    return sorted((sorted(m) for m in members.values() if photos.intersection(m)), key=lambda m: m[0])


def split_classes(classes: list[CorpusClass], spec: CorpusSpec) -> dict[str, list[str]]:
    """train / val / test class names by the module's rules 2-4: concept groups of photo classes go whole to val
    or test, the drawn classes tied to no photo class are shuffled into train and val."""
    photos = {c.name for c in classes if c.kind == "stamp-photo"}
    groups = concept_groups(classes)
    order = [groups[i] for i in np.random.default_rng([spec.seed, 2]).permutation(len(groups))]
    target = max(1, round(spec.photo_val_fraction * len(photos))) if len(photos) >= 2 else 0
    val, test, n_val = [], [], 0
    for g in order:
        size = len(photos.intersection(g))
        if n_val + size <= target:
            val.extend(g)
            n_val += size
        else:
            test.extend(g)
    if n_val == 0 and len(order) >= 2:  # every group is larger than the target: the smallest one goes to val
        smallest = min(order, key=lambda g: len(photos.intersection(g)))
        val.extend(smallest)
        test = [n for n in test if n not in smallest]
    grouped = set(val) | set(test)
    drawn = sorted(c.name for c in classes if c.name not in grouped)
    rng = np.random.default_rng([spec.seed, 1])
    drawn = [drawn[i] for i in rng.permutation(len(drawn))]
    n_drawn_val = int(round(spec.val_fraction * len(drawn)))
    return {"train": sorted(drawn[n_drawn_val:]), "val": sorted(val + drawn[:n_drawn_val]), "test": sorted(test)}


def concept_overlaps(classes: list[CorpusClass], split_of: dict[str, str]) -> list[str]:
    """The ties whose two classes are on different sides, as "a (split) / b (split)"; empty when the split keeps
    every concept on one side."""
    return [f"{a} ({split_of[a]}) / {b} ({split_of[b]})" for a, b in concept_ties(classes)
            if split_of[a] != split_of[b]]


def group_records(classes: list[CorpusClass], split_of: dict[str, str]) -> list[dict]:
    """The concept groups for MANIFEST.json: the photo classes' concept words, the group's split, its classes."""
    named = {c.name: c for c in classes}
    out = []
    for g in concept_groups(classes):
        words_ = set().union(*(concept(named[n]) for n in g if named[n].kind == "stamp-photo"))
        out.append({"concept": sorted(words_), "split": split_of[g[0]], "classes": g})
    return out


def photo_classes(corpus_dir: str | Path, split: str) -> list[str]:
    """The real-photo classes of a make-corpus folder's "val" or "test" split, from its MANIFEST.json."""
    if split not in ("val", "test"):
        raise DataError(f"split {split!r}: real-photo classes exist for 'val' and 'test' only")
    path = Path(corpus_dir) / "MANIFEST.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; {corpus_dir} is not a make-corpus folder (build one with "
                        f"fewshotseg make-corpus --out DIR)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err}); rebuild the corpus with make-corpus") from err
    photo = manifest.get("photo_splits")
    if not isinstance(photo, dict) or split not in photo:
        raise DataError(f"{path}: corpus version {manifest.get('corpus_version', 1)} has no photo_splits (its "
                        f"real-photo val/test classes); rebuild with make-corpus (version {CORPUS_VERSION})")
    return list(photo[split])


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
    pools = split_backgrounds(backgrounds, spec)
    splits = split_classes(classes, spec)
    for part in ("train", "test"):
        if not splits[part]:
            raise DataError(f"the sources give no {part} class; check the package list ({', '.join(roots)})")
    split_of = {name: part for part, names in splits.items() for name in names}
    overlaps = concept_overlaps(classes, split_of)
    if overlaps:
        raise DataError(f"a concept is on two sides of the split: {'; '.join(overlaps)} (tied classes must share "
                        f"a split; nothing was written)")
    photo_names = {c.name for c in classes if c.kind == "stamp-photo"}
    groups = group_records(classes, split_of)
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
            pairs = [compose(comp, c, n, others, pools[split_of[c.name]], spec, ci, roots)
                     for n in range(spec.pairs)]
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
    photo_splits = {part: [n for n in splits[part] if n in photo_names] for part in ("val", "test")}
    if not photo_splits["val"]:
        progress("no real-photo validation class: the photo classes form fewer than 2 concept groups "
                 "(or were skipped)")
    groups = [{**g, "classes": [n for n in g["classes"] if n not in skipped]} for g in groups]
    with_distractors = sum(1 for im in images if im["distractors"])
    manifest = {
        "corpus_version": CORPUS_VERSION,
        "spec": asdict(spec),
        "sources": [{"package": u.source.package, "version": u.version, "role": u.source.role,
                     "family": u.source.family, "licences": u.licences, "deb": u.deb.name} for u in unpacked],
        "classes": {c.name: {"kind": c.kind, "split": split_of[c.name], "instances": len(c.instances)}
                    for c in classes},
        "splits": {k: len(v) for k, v in splits.items()},
        "photo_splits": photo_splits,
        "concept_groups": groups,
        "overlaps": concept_overlaps(classes, split_of),
        "backgrounds": len(backgrounds),
        "background_pools": {part: len(pools[part]) for part in SPLITS},
        "distractor_fraction": round(with_distractors / max(1, len(images)), 4),
        "skipped_classes": skipped,
        "images": images,
    }
    (tmp / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    summary = {k: manifest[k] for k in ("corpus_version", "splits", "backgrounds", "background_pools",
                                        "distractor_fraction", "overlaps")}
    summary["photo_splits"] = {k: len(v) for k, v in photo_splits.items()}
    summary["images"] = len(images)
    progress(f"wrote {len(images)} pairs of {len(classes)} classes "
             f"(train {len(splits['train'])}, val {len(splits['val'])} with {len(photo_splits['val'])} real-photo, "
             f"test {len(splits['test'])} with {len(photo_splits['test'])} real-photo; backgrounds "
             f"{', '.join(f'{k} {v}' for k, v in manifest['background_pools'].items())}; "
             f"{100 * manifest['distractor_fraction']:.0f} % of images with a distractor) to {out}")
    return summary
