"""The built-in benchmark: few-shot segmentation tasks that need their support set, generated in seconds.

A class is a conjunction of three attributes, a shape, a colour and a texture ("red striped star"). Every image
holds one object of its class among 2-3 distractor objects of other classes, on a textured background; only the
class's object is foreground in the mask. Most distractors differ from the target in a single attribute (same
shape and colour, other texture; ...), so neither "segment the salient objects" nor any one attribute solves a
task: what to segment is only defined by the support images. Test classes are attribute combinations never
segmented in training, which is what meta-learning has to generalise to, as FSS-1000's test classes are objects
never seen in training.

The layout is FSS-1000's (`<out>/<class>/<n>.jpg`, mask `<n>.png` with 0/255) plus `splits.json` (train, val,
test classes, sized like FSS-1000's 560/200/240 when there are 1000 classes) and `benchmark.json` (how it was
made). Everything follows from the seed: the class list, the splits and every pixel.
"""

from __future__ import annotations

import colorsys
import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

GENERATOR_VERSION = 1

COLOURS = {  # hue in degrees; 30 degrees apart
    "red": 0, "orange": 30, "yellow": 55, "lime": 90, "green": 125, "teal": 160,
    "cyan": 185, "azure": 210, "blue": 240, "violet": 270, "magenta": 300, "pink": 330,
}


def _shape_fns():
    r = lambda u, v: np.hypot(u, v)  # noqa: E731
    a = lambda u, v: np.arctan2(v, u)  # noqa: E731
    return {
        "disk": lambda u, v: r(u, v) < 0.95,
        "square": lambda u, v: np.maximum(abs(u), abs(v)) < 0.78,
        "triangle": lambda u, v: (v < 0.5) & (np.sqrt(3) * u - v < 1.0) & (-np.sqrt(3) * u - v < 1.0),
        "diamond": lambda u, v: abs(u) + abs(v) < 1.0,
        "cross": lambda u, v: ((abs(u) < 0.34) & (abs(v) < 1.0)) | ((abs(v) < 0.34) & (abs(u) < 1.0)),
        "ring": lambda u, v: (r(u, v) < 1.0) & (r(u, v) > 0.55),
        "star": lambda u, v: r(u, v) < 0.45 + 0.55 * np.abs(np.cos(2.5 * a(u, v))) ** 3,
        "hexagon": lambda u, v: np.maximum(abs(u) * 0.866 + abs(v) * 0.5, abs(v)) < 0.85,
        "crescent": lambda u, v: (r(u, v) < 1.0) & (np.hypot(u - 0.5, v) > 0.75),
        "bar": lambda u, v: (abs(u) < 1.0) & (abs(v) < 0.38),
        "heart": lambda u, v: (u**2 + (-v * 1.1 - 0.35 * np.sqrt(abs(u) + 1e-9) + 0.25) ** 2) < 0.75,
        "arrow": lambda u, v: ((abs(v) < 0.25) & (u > -1.0) & (u < 0.2)) | ((u >= 0.0) & (abs(v) < 0.9 - 0.9 * u)),
    }


def _texture_fns():
    f = 1.6 * math.pi  # stripes of period ~1.25 object radii
    return {
        "solid": lambda u, v: np.zeros_like(u),
        "hstripes": lambda u, v: (np.sin(f * v * 1.6) > 0).astype(np.float32),
        "vstripes": lambda u, v: (np.sin(f * u * 1.6) > 0).astype(np.float32),
        "diagonal": lambda u, v: (np.sin(f * (u + v) * 1.2) > 0).astype(np.float32),
        "checker": lambda u, v: ((np.floor(u * 2.2) + np.floor(v * 2.2)) % 2).astype(np.float32),
        "dots": lambda u, v: ((np.hypot((u * 2.0) % 1 - 0.5, (v * 2.0) % 1 - 0.5)) < 0.28).astype(np.float32),
        "rings": lambda u, v: (np.sin(f * 2.0 * np.hypot(u, v)) > 0).astype(np.float32),
        "spokes": lambda u, v: (np.sin(4 * np.arctan2(v, u)) > 0).astype(np.float32),
        "halves": lambda u, v: (u > 0).astype(np.float32),
        "gradient": lambda u, v: np.clip((v + 1) / 2, 0, 1).astype(np.float32),
        "outline": lambda u, v: np.zeros_like(u),  # drawn by Renderer.draw: a dark rim around a light body
        "speckle": lambda u, v: ((np.sin(13.1 * u + 3.7) * np.sin(11.3 * v + 1.3)) > 0.25).astype(np.float32),
    }


SHAPES = list(_shape_fns())
TEXTURES = list(_texture_fns())


@dataclass(frozen=True)
class SyntheticSpec:
    classes: int = 1000
    pairs: int = 10
    size: int = 64
    seed: int = 0
    distractors: tuple[int, int] = (1, 3)  # per image, inclusive
    hard_negative_rate: float = 0.3  # a distractor differs from the target in exactly one attribute


@dataclass(frozen=True)
class ObjectClass:
    shape: int
    colour: int
    texture: int

    @property
    def name(self) -> str:
        return f"{list(COLOURS)[self.colour]}_{TEXTURES[self.texture]}_{SHAPES[self.shape]}"


def class_list(spec: SyntheticSpec) -> list[ObjectClass]:
    """`spec.classes` distinct (shape, colour, texture) combinations, in a seeded random order."""
    combos = [ObjectClass(s, c, t) for s in range(len(SHAPES)) for c in range(len(COLOURS)) for t in range(len(TEXTURES))]
    if spec.classes > len(combos):
        raise ValueError(f"the built-in benchmark has at most {len(combos)} classes (asked for {spec.classes})")
    rng = np.random.default_rng([spec.seed, 0])
    return [combos[i] for i in rng.permutation(len(combos))[: spec.classes]]


def split_classes(names: list[str], seed: int) -> dict[str, list[str]]:
    """train/val/test in FSS-1000's proportions (560/200/240 of 1000)."""
    rng = np.random.default_rng([seed, 1])
    order = [names[i] for i in rng.permutation(len(names))]
    n_test = round(0.24 * len(names))
    n_val = round(0.20 * len(names))
    return {
        "train": sorted(order[n_test + n_val :]),
        "val": sorted(order[n_test : n_test + n_val]),
        "test": sorted(order[:n_test]),
    }


class Renderer:
    def __init__(self, size: int):
        self.size = size
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        self.xs, self.ys = xs, ys
        self.shapes = list(_shape_fns().values())
        self.textures = list(_texture_fns().values())
        self.colours = [np.array(colorsys.hsv_to_rgb(h / 360, 0.85, 0.95), np.float32) for h in COLOURS.values()]

    def background(self, rng: np.random.Generator) -> np.ndarray:
        s = self.size
        base = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.25, 0.75)), np.float32)
        low = rng.normal(0, 0.12, (6, 6, 3)).astype(np.float32)
        field = _upsample(low, s)
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(0.08, 0.25) * s
        stripes = np.sin((self.xs * math.cos(angle) + self.ys * math.sin(angle)) * 2 * math.pi / period)
        img = base + field + 0.06 * stripes[..., None]
        return img

    def draw(self, img: np.ndarray, cls: ObjectClass, rng: np.random.Generator) -> np.ndarray:
        """Paint one object in place; returns its (S, S) boolean footprint."""
        s = self.size
        radius = rng.uniform(0.15, 0.23) * s
        cx, cy = rng.uniform(radius * 0.8, s - radius * 0.8, size=2)
        theta = rng.uniform(-0.35, 0.35) * math.pi
        dx, dy = self.xs - cx, self.ys - cy
        u = (dx * math.cos(theta) + dy * math.sin(theta)) / radius
        v = (-dx * math.sin(theta) + dy * math.cos(theta)) / radius
        inside = self.shapes[cls.shape](u, v)
        colour = self.colours[cls.colour] * rng.uniform(0.85, 1.05)
        if TEXTURES[cls.texture] == "outline":
            rim = inside & ~self.shapes[cls.shape](u * 1.35, v * 1.35)
            body = colour * 0.55 + 0.45
            paint = np.where(rim[..., None], colour * 0.4, body)
        else:
            pattern = self.textures[cls.texture](u, v)[..., None]
            paint = colour * (1 - 0.6 * pattern) + 0.05 * pattern
        img[inside] = paint[inside]
        return inside


def _upsample(low: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a small (h, w, 3) field to (size, size, 3)."""
    h, w, _ = low.shape
    yi = np.linspace(0, h - 1, size)
    xi = np.linspace(0, w - 1, size)
    y0, x0 = np.floor(yi).astype(int), np.floor(xi).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (yi - y0)[:, None, None], (xi - x0)[None, :, None]
    top = low[y0][:, x0] * (1 - fx) + low[y0][:, x1] * fx
    bottom = low[y1][:, x0] * (1 - fx) + low[y1][:, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def distractor_classes(target: ObjectClass, classes: list[ObjectClass], count: int, rate: float,
                       rng: np.random.Generator, by_attrs: dict) -> list[ObjectClass]:
    """Other classes; with probability `rate` one that differs from the target in exactly one attribute."""
    out = []
    for _ in range(count):
        if rng.random() < rate:
            which = int(rng.integers(3))
            attrs = [target.shape, target.colour, target.texture]
            options = [c for c in by_attrs[(which, tuple(a for i, a in enumerate(attrs) if i != which))] if c != target]
            if options:
                out.append(options[int(rng.integers(len(options)))])
                continue
        while True:
            other = classes[int(rng.integers(len(classes)))]
            if other != target:
                out.append(other)
                break
    return out


def render_pair(spec: SyntheticSpec, classes: list[ObjectClass], ci: int, n: int, renderer: Renderer, by_attrs: dict,
                *, with_objects: bool = False):
    """One image (S, S, 3) uint8 and mask (S, S) uint8 0/255 of class `ci`, example `n`; with `with_objects`, also
    the object map (0 background, 1 the target, 2.. the distractors; the visible, topmost object per pixel)."""
    rng = np.random.default_rng([spec.seed, 2, ci, n])
    target = classes[ci]
    others = distractor_classes(target, classes, int(rng.integers(spec.distractors[0], spec.distractors[1] + 1)),
                                spec.hard_negative_rate, rng, by_attrs)
    for _attempt in range(20):
        img = renderer.background(rng)
        objects = np.zeros((spec.size, spec.size), np.uint8)
        area = 0
        for j in rng.permutation(len(others) + 1):  # the target is drawn at a random depth
            is_target = j == len(others)
            footprint = renderer.draw(img, target if is_target else others[j], rng)
            objects[footprint] = 1 if is_target else j + 2
            area = footprint.sum() if is_target else area
        if area and (objects == 1).sum() >= 0.6 * area:  # the target stays mostly visible
            break
    img = img + rng.normal(0, 0.015, img.shape).astype(np.float32)
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    mask = (objects == 1).astype(np.uint8) * 255
    return (image, mask, objects) if with_objects else (image, mask)


def _write_class(args) -> tuple[str, int]:
    spec, classes, ci, out = args
    renderer = Renderer(spec.size)
    by_attrs = _index_by_attributes(classes)
    folder = Path(out) / classes[ci].name
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(spec.pairs):
        image, mask = render_pair(spec, classes, ci, n, renderer, by_attrs)
        Image.fromarray(image).save(folder / f"{n + 1}.jpg", quality=95)
        Image.fromarray(mask).save(folder / f"{n + 1}.png")
    return classes[ci].name, spec.pairs


def _index_by_attributes(classes: list[ObjectClass]) -> dict:
    """(varying attribute, the two fixed attribute values) -> classes sharing them."""
    index: dict = {}
    for c in classes:
        attrs = (c.shape, c.colour, c.texture)
        for which in range(3):
            key = (which, tuple(a for i, a in enumerate(attrs) if i != which))
            index.setdefault(key, []).append(c)
    return index


def make_synthetic(out: str | Path, spec: SyntheticSpec = SyntheticSpec(), *, workers: int = 1,
                   progress: bool = True) -> dict[str, list[str]]:
    """Write the benchmark to `out`; returns its class splits."""
    out = Path(out)
    if out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        marker = out / "benchmark.json"
        if not marker.exists():
            raise FileExistsError(f"{out} exists and is not a built-in benchmark folder; choose an empty --out")
    out.mkdir(parents=True, exist_ok=True)
    classes = class_list(spec)
    jobs = [(spec, classes, ci, str(out)) for ci in range(len(classes))]
    bar = tqdm(total=len(jobs), desc="make-synthetic", unit="class", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_write_class, jobs, chunksize=16):
                bar.update()
    else:
        for job in jobs:
            _write_class(job)
            bar.update()
    bar.close()
    splits = split_classes([c.name for c in classes], spec.seed)
    (out / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
    (out / "benchmark.json").write_text(json.dumps({
        "generator": "fewshotseg built-in benchmark", "version": GENERATOR_VERSION, **asdict(spec),
        "shapes": SHAPES, "colours": list(COLOURS), "textures": TEXTURES,
        "splits": {k: len(v) for k, v in splits.items()},
    }, indent=1) + "\n")
    return splits
