"""One browser session's work, without any web code: its support pairs, queries and adapted network, all in its own
temporary folder.

    ws = Workspace(root, Limits())
    ws.add_support(["a.jpg", "b.jpg"])          # uploads, checked against the limits and copied into ws.folder
    ws.set_mask("a.jpg", "a_mask.png")          # an uploaded mask ...
    ws.set_mask("b.jpg", painted, "painted")    # ... or one painted in the page ((H, W) array, nonzero = object)
    ws.add_queries(["c.jpg"])
    ws.adapt(initialization, lr=0.005, steps=5, seed=0)
    ws.segment()                                # -> [(name, overlay, mask)], and masks.zip
    ws.correct("c.jpg", corrected)              # the prediction, fixed in the page: c.jpg becomes a support pair
    ws.adapt(initialization, lr=0.005, steps=5, seed=0)   # ... and the next adaptation uses it
    ws.close()                                  # removes the folder (the session ended)

Several objects at once: name them, then give each support image one binary mask per object it shows (painted or
uploaded for the object chosen), or upload an indexed mask that sets them all; Adapt then fits a
`MultiClassSegmenter` (its default strategy), and each query's result is a label map (0 background, k object k):

    ws.set_classes(["duck", "cat"])             # -> a message saying what happened to the masks already painted
    ws.set_mask("a.jpg", painted, "painted", cls="cat")
    ws.set_mask("b.jpg", "b_indexed.png")       # values 1 duck, 2 cat: every object of b.jpg at once

Everything the browser sends is read from the upload's own path (a file the web library wrote into the server's
upload folder), checked (size, pixels, decodable), and copied into `folder` under a sanitised name; no name from the
browser is ever used as a path outside it. A file that is not a readable image, or breaks a limit, is refused with
a message (the others of the same upload are kept); every other mistake is a `UserError`; the page shows both.

Adapting is `FewShotSegmenter.fit` with the support statistics and the seed given, and each query is predicted alone,
exactly as `fewshotseg adapt` does: the page's masks equal the command's for the same initialization, update
parameters, seed and support pairs in the same order.

With several objects, the masks equal `MultiClassSegmenter.fit` on the same images with one binary mask per object
and image (None where the image has none of it), and its `predict`: overlaps between predicted objects go to the
most probable one and are counted per query (`contested`). A pixel painted for one object and then for another
belongs to the one painted last, and `set_mask` says how many pixels moved: no pixel is ever in two objects' masks.

Correcting closes the loop "predict, correct the worst, adapt again": `correct` moves a predicted query into the
support set with its corrected mask and records the share of its pixels the correction changed, so that the page
can show whether each round of corrections changes less than the one before.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fewshotseg.adapt import export_onnx, label_overlay, overlay
from fewshotseg.data.dataset import DataError
from fewshotseg.data.images import load_image, read_pair
from fewshotseg.errors import UserError
from fewshotseg.multiclass import MultiClassSegmenter
from fewshotseg.segmenter import FewShotSegmenter

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_CLASS = "object"  # the one object of a session that names none
MAX_CLASSES = 20
CLASS_NAME = re.compile(r"[\w -]{1,40}")  # letters, digits, '_', '-' and spaces: object names go into file names


@dataclass
class Limits:
    """What one upload and one session may hold; `serve`'s flags set them."""

    max_image_side: int = 4096  # pixels along either side of one image
    max_images: int = 20  # support images, and separately query images, per session
    max_file_mb: float = 20.0  # bytes of one uploaded file


@dataclass
class Initialization:
    """An initialization loaded once by the server and copied for each session that adapts it."""

    label: str
    segmenter: FewShotSegmenter

    def fresh(self) -> FewShotSegmenter:
        s = self.segmenter
        return FewShotSegmenter(copy.deepcopy(s.init), copy.deepcopy(s.card), device=s.device, described=s.described)

    def default_params(self, shots: int) -> tuple[float, int, str]:
        """(lr, steps, where they come from) of the initialization's own update parameters for `shots` pairs."""
        params, source = self.segmenter.update_params_for(max(shots, 1))
        return params.lr, params.steps, source


@dataclass
class Pair:
    name: str  # sanitised file name, unique within the session
    path: Path  # the session's copy of the image
    rgb: np.ndarray  # (H, W, 3) uint8, upright
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # {object: (H, W) bool on the upright grid}
    mask_source: str = ""  # "uploaded", "painted" or "corrected" (a query's prediction, corrected in the page)
    changed: float | None = None  # a corrected pair's share of pixels whose label the correction changed

    @property
    def mask(self) -> np.ndarray | None:
        """(H, W) bool: the object's pixels (with several objects, any object's); None before any is marked."""
        if not self.masks:
            return None
        return np.logical_or.reduce(list(self.masks.values()))

    def labels(self, classes: list[str]) -> np.ndarray:
        """(H, W) uint8: 0 background, k the object classes[k - 1] (no pixel is in two objects' masks)."""
        out = np.zeros(self.rgb.shape[:2], np.uint8)
        for k, cls in enumerate(classes, start=1):
            if cls in self.masks:
                out[self.masks[cls]] = k
        return out


@dataclass
class Workspace:
    root: Path
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="session-", dir=self.root))
        self.support: list[Pair] = []
        self.queries: list[Pair] = []
        self.settings: dict[str, Any] = {}
        self.classes: list[str] = [DEFAULT_CLASS]  # the objects; one: `FewShotSegmenter`, several: multi-class
        self.segmenter: FewShotSegmenter | MultiClassSegmenter | None = None
        # (query name, overlay, mask): the mask (H, W) bool, or with several objects the label map (H, W) uint8
        self.results: list[tuple[str, np.ndarray, np.ndarray]] = []
        self.contested: dict[str, int] = {}  # several objects: per query, pixels two objects claimed
        self.lock = threading.Lock()  # one event at a time per session (two tabs of one session may click at once)
        self.closed = False

    # ------------------------------------------------------------------------------------------ uploads

    def add_support(self, paths: list[str | Path]) -> tuple[list[str], list[str]]:
        """Add uploaded support images (without masks yet): (their names in the session, a message per file
        refused)."""
        added, refused = self._add(paths, self.support, "support")
        if added:
            self._forget_adaptation()
        return added, refused

    def add_queries(self, paths: list[str | Path]) -> tuple[list[str], list[str]]:
        return self._add(paths, self.queries, "query")

    def remove_support(self, name: str) -> None:
        self.support = [p for p in self.support if p.name != name]
        self._forget_adaptation()

    def clear_queries(self) -> None:
        self.queries, self.results = [], []

    def _add(self, paths: list[str | Path], into: list[Pair], kind: str) -> tuple[list[str], list[str]]:
        """Copy the readable images into the session; a file that is not one (or breaks a limit) is refused with
        a message and the others are kept. Over the count limit nothing is added."""
        self._check_open()
        paths = [Path(p) for p in paths or []]
        if len(into) + len(paths) > self.limits.max_images:
            raise UserError(f"at most {self.limits.max_images} {kind} images per session (this server's "
                            f"--max-images); you have {len(into)} and added {len(paths)}")
        taken = {p.name for p in into}
        added, refused = [], []
        for src in paths:
            try:
                rgb = self._checked_image(src)
            except UserError as err:
                refused.append(str(err))
                continue
            name = _unique(_safe_name(src.name), taken)
            taken.add(name)
            dest = self.folder / kind / name
            dest.parent.mkdir(exist_ok=True)
            shutil.copyfile(src, dest)
            into.append(Pair(name, dest, rgb))
            added.append(name)
        return added, refused

    def _checked_image(self, path: Path) -> np.ndarray:
        """The upright pixels of one uploaded file, or a UserError naming it and the limit it breaks."""
        shown = _safe_name(path.name)
        try:
            size = path.stat().st_size
        except OSError:
            raise UserError(f"{shown} is no longer on the server: upload it again") from None
        if size > self.limits.max_file_mb * 1e6:
            raise UserError(f"{shown} is {size / 1e6:.1f} MB; this server takes files up to "
                            f"{self.limits.max_file_mb:g} MB (--max-file-mb)")
        try:
            with Image.open(path) as im:  # reads the header only: the pixel limit is checked before decoding
                w, h = im.size
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            raise UserError(f"{shown} is not an image this page can read: upload JPEG or PNG photos") from None
        side = self.limits.max_image_side
        if max(w, h) > side:
            raise UserError(f"{shown} is {w}x{h} px; this server takes images up to {side} px on a side "
                            "(--max-image-side): downscale it first")
        try:
            return load_image(path, shown)
        except DataError:
            raise UserError(f"{shown} cannot be decoded (corrupt or truncated): re-export it as JPEG or PNG") from None

    # ------------------------------------------------------------------------------------------ objects

    @property
    def multiclass(self) -> bool:
        return len(self.classes) > 1

    def set_classes(self, names: list[str] | str) -> str:
        """Name the objects (a list, or one text "duck, cat"); returns what happened to the masks already marked.

        An object that keeps its name keeps its masks; the other old names are renamed, in order, to the new names
        not seen before (their masks kept); old names left over are removed with their masks, new ones left over
        start unmarked. Going from one object to several keeps the one's masks as the first new object's."""
        self._check_open()
        if isinstance(names, str):
            names = names.split(",")
        names = [" ".join(n.split()) for n in names]
        names = [n for n in names if n]
        if not names:
            raise UserError("name at least one object (e.g. \"duck\" or \"duck, cat\")")
        bad = [n for n in names if not CLASS_NAME.fullmatch(n)]
        if bad:
            raise UserError(f"object name(s) {', '.join(repr(b) for b in bad)}: use letters, digits, '-', '_' and "
                            "spaces (up to 40), separated by commas")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UserError(f"object(s) named twice: {', '.join(twice)}; give each object its own name")
        if len(names) > MAX_CLASSES:
            raise UserError(f"at most {MAX_CLASSES} objects at once; you named {len(names)}")
        if names == self.classes:
            return ""
        old_left = [c for c in self.classes if c not in names]
        new_left = [n for n in names if n not in self.classes]
        renamed = dict(zip(old_left, new_left, strict=False))
        removed = old_left[len(new_left):]
        added = new_left[len(old_left):]
        said = []
        for old, new in renamed.items():
            marked = sum(old in p.masks for p in self.support)
            said.append(f"{old!r} is now {new!r}" + (f" ({marked} mask(s) kept)" if marked else ""))
        for old in removed:
            marked = sum(old in p.masks for p in self.support)
            said.append(f"{old!r} removed" + (f" with its mask(s) on {marked} image(s)" if marked else ""))
        if added:
            said.append(f"{', '.join(repr(a) for a in added)} added: mark {'it' if len(added) == 1 else 'them'} on "
                        "the support images")
        for p in self.support:
            p.masks = {renamed.get(c, c): m for c, m in p.masks.items() if c not in removed}
        self.classes = names
        self._forget_adaptation()
        return "; ".join(said)

    def _class(self, cls: str | None) -> str:
        if cls is None:
            return self.classes[0]
        if cls not in self.classes:
            raise UserError(f"no object named {cls!r}: the objects are {', '.join(self.classes)}")
        return cls

    # ------------------------------------------------------------------------------------------ masks

    def pair(self, name: str) -> Pair:
        for p in self.support:
            if p.name == name:
                return p
        raise UserError("choose a support image to label first (upload one, then pick it in the list)")

    def set_mask(self, name: str, mask: str | Path | np.ndarray, source: str = "uploaded", *,
                 cls: str | None = None) -> str:
        """Give the support image `name` its mask of the object `cls` (the first object by default): an uploaded
        file (any of `adapt`'s mask formats, at the image's size) or an (H, W) array painted in the page (nonzero =
        object; resized to the image if the canvas was). Returns a note ("" when there is nothing to say).

        With several objects, an uploaded file whose values are object numbers (0 background, k the k-th object,
        some value above 1) is an indexed mask: it sets every object of the image at once. Pixels that another
        object of the image had move to `cls` (the note says how many); an empty mask clears `cls` from the
        image if it had any of it."""
        self._check_open()
        pair = self.pair(name)
        cls = self._class(cls)
        if not isinstance(mask, np.ndarray):
            self._checked_image(Path(mask))
            indexed = self._indexed(pair, Path(mask), name)
            if indexed is not None:
                masks = {c: indexed == k for k, c in enumerate(self.classes, start=1) if (indexed == k).any()}
                _check_foreground(indexed > 0, name, source)
                pair.masks, pair.mask_source, pair.changed = masks, source, None
                self._forget_adaptation()
                return (f"{name}: read as an indexed mask: " +
                        ", ".join(f"{c} {int(m.sum())} px" for c, m in masks.items()))
            try:
                _, m = read_pair(pair.rgb, Path(mask), f"mask of {name}")
            except DataError as err:
                raise UserError(f"the mask of {name}: {getattr(err, 'reason', err)}") from None
        else:
            m = _at_size(mask, pair.rgb)
        if self.multiclass and not m.any() and cls in pair.masks:
            del pair.masks[cls]
            self._forget_adaptation()
            return f"{cls} cleared from {name}" + ("" if pair.masks else f" ({name} has no mask now)")
        _check_foreground(m, name, source, cls if self.multiclass else "")
        masks, note = _given(pair.masks, cls, m, name)
        pair.masks, pair.mask_source, pair.changed = masks, source, None
        self._forget_adaptation()
        return note

    def _indexed(self, pair: Pair, path: Path, name: str) -> np.ndarray | None:
        """The uploaded mask as a label map (H, W) uint8 when, with several objects, its values are object numbers
        with one above 1 (a binary 0/1 or 0/255 mask is the chosen object's); else None."""
        if not self.multiclass:
            return None
        try:
            with Image.open(path) as im:
                if im.mode not in ("P", "L"):
                    return None
                values = np.unique(np.asarray(im))
        except (UnidentifiedImageError, OSError, ValueError):
            return None
        if values.max(initial=0) <= 1 or values.max() > len(self.classes):
            return None
        from fewshotseg.data.images import read_label_map

        try:
            return read_label_map(path, pair.path, pair.rgb.shape[:2], f"mask of {name}")
        except DataError as err:
            raise UserError(f"the mask of {name}: {getattr(err, 'reason', err)}") from None

    def labelled(self) -> list[Pair]:
        return [p for p in self.support if p.mask is not None]

    # ------------------------------------------------------------------------------------------ corrections

    def prediction(self, name: str) -> Pair:
        """The query `name` with its predicted mask ((H, W) bool at the image's size) as `mask` (with several
        objects, each object's in `masks`)."""
        if not self.results:
            raise UserError("no prediction to correct yet: adapt (or press Segment queries) first, then open a "
                            "predicted query in the correction editor")
        predicted = {n: mask for n, _, mask in self.results}
        for q in self.queries:
            if q.name == name and name in predicted:
                return Pair(q.name, q.path, q.rgb, self._split(predicted[name]), "predicted")
        raise UserError("choose a predicted query to correct (pick it in the list or click its overlay)")

    def _split(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        """{object: (H, W) bool} of a result's mask (a label map with several objects), leaving out empty ones."""
        if not self.multiclass:
            return {self.classes[0]: mask} if mask.any() else {}
        return {c: mask == k for k, c in enumerate(self.classes, start=1) if (mask == k).any()}

    def correct(self, name: str, mask: np.ndarray, *, cls: str | None = None) -> Pair:
        """Move the predicted query `name` into the support set with `mask`, its prediction corrected ((H, W),
        nonzero = object; resized to the image if the canvas was), and record the share of the image's pixels whose
        label the correction changed. Returns the new support pair (renamed if a support image has its name).

        The image leaves the queries: its label is now known, and predicting it again would only echo its support
        mask (and put a second, different mask of it in the download). The other predictions and the adapted
        network stay, so several queries can be corrected before adapting again; the next Adapt uses the corrected
        masks. A refused correction (no foreground, support set full) changes nothing.

        With several objects `mask` is the object `cls`'s (the first by default), its pixels taken from the other
        objects as in `set_mask`; the other objects keep their predicted masks (correct them on the support image)."""
        self._check_open()
        query = self.prediction(name)
        cls = self._class(cls)
        m = _at_size(mask, query.rgb)
        if self.multiclass:
            masks, _ = _given(query.masks, cls, m, name)
            masks = {c: x for c, x in masks.items() if x.any()}
            _check_foreground(np.logical_or.reduce([m, *masks.values()]), name, "corrected")
        else:
            _check_foreground(m, name, "corrected")
            masks = {cls: m}
        if len(self.support) >= self.limits.max_images:
            raise UserError(f"at most {self.limits.max_images} support images per session (this server's "
                            f"--max-images): remove one before adding {name}")
        new = _unique(name, {p.name for p in self.support})
        dest = self.folder / "support" / new
        dest.parent.mkdir(exist_ok=True)
        shutil.move(query.path, dest)
        pair = Pair(new, dest, query.rgb, masks, "corrected")
        pair.changed = float(np.mean(pair.labels(self.classes) != query.labels(self.classes)))
        self.support.append(pair)
        self.queries = [q for q in self.queries if q.name != name]
        self.results = [r for r in self.results if r[0] != name]
        return pair

    def corrections(self) -> list[tuple[str, float]]:
        """(support name, share of pixels changed) of every corrected prediction in the support set, in the order
        they were corrected."""
        return [(p.name, p.changed) for p in self.support if p.changed is not None]

    # ------------------------------------------------------------------------------------------ U and prediction

    def adapt(self, init: Initialization, *, lr: float, steps: int, seed: int, method: str = "card",
              strategy: str = "auto", progress=None) -> str:
        """Adapt `init` to the labelled pairs (in upload order) with `method` (the initialization's own by default;
        `lr` and `steps` set U when it fine-tunes); returns a one-line summary. With several objects it fits a
        `MultiClassSegmenter` (`strategy`: its measured default, `auto`) on one mask per object and image."""
        self._check_open()
        if not self.support:
            raise UserError("no support image yet: upload at least one image of the object and mark it")
        unlabelled = [p.name for p in self.support if p.mask is None]
        if unlabelled:
            raise UserError(f"support image(s) without a mask: {', '.join(unlabelled)}; paint the object or "
                            "upload its mask, or remove the image")
        if self.multiclass:
            return self._adapt_classes(init, lr=lr, steps=steps, seed=seed, method=method, strategy=strategy,
                                       progress=progress)
        seg = init.fresh()
        spec, spec_source = seg.method_for(method or "card")
        params, source = None, ""
        if spec.method == "finetune":
            if steps is None or lr is None or steps < 1 or not lr > 0:
                raise UserError("U needs a learning rate above 0 and at least 1 step")
            params, source = seg.update_params_for(len(self.support), lr=float(lr), steps=int(steps))
        seg.fit([p.rgb for p in self.support], [p.mask for p in self.support], seed=int(seed), update_params=params,
                method=spec, names=[p.name for p in self.support], progress=progress)
        seg.params_source = source
        self.segmenter = seg
        self.results = []
        self.settings = {"init": init.label, "described": seg.described, "size": seg.size, "seed": int(seed),
                         "method": spec.as_dict(), "method_source": spec_source,
                         "update_params": params.as_dict() if params is not None else None,
                         "update_params_source": source, "support": [p.name for p in self.support]}
        how = (f"U: lr {params.lr:g}, {params.steps} steps, BatchNorm {params.bn_policy}" if params is not None
               else spec.describe())
        return f"adapted {seg.described} to {len(self.support)} pair(s) with {how}; seed {int(seed)}"

    def _adapt_classes(self, init: Initialization, *, lr: float, steps: int, seed: int, method: str,
                       strategy: str = "auto", progress=None) -> str:
        missing = [c for c in self.classes if not any(c in p.masks for p in self.support)]
        if missing:
            raise UserError(f"no support image has any pixel of {', '.join(repr(c) for c in missing)}: choose "
                            f"{'it' if len(missing) == 1 else 'each'} in Object to paint and paint it on at least one "
                            "image, or remove it from the objects")
        seg = MultiClassSegmenter(init.fresh())
        spec, spec_source = seg.base.method_for(method or "card")
        params, source = None, ""
        if spec.method == "finetune":
            if steps is None or lr is None or steps < 1 or not lr > 0:
                raise UserError("U needs a learning rate above 0 and at least 1 step")
            params, source = seg.base.update_params_for(len(self.support), lr=float(lr), steps=int(steps))
        seg.fit([p.rgb for p in self.support], {c: [p.masks.get(c) for p in self.support] for c in self.classes},
                self.classes, strategy=strategy, method=spec, update_params=params, seed=int(seed),
                names=[p.name for p in self.support], progress=progress)
        seg.method_source = spec_source
        self.segmenter = seg
        self.results, self.contested = [], {}
        self.settings = {"init": init.label, "described": seg.base.described, "size": seg.size, "seed": int(seed),
                         "classes": list(self.classes), "strategy": seg.strategy, "method": spec.as_dict(),
                         "method_source": spec_source, "update_params": params.as_dict() if params is not None else None,
                         "update_params_source": source, "support": [p.name for p in self.support],
                         "overlaps": "a pixel claimed by several objects goes to the most probable one"}
        how = (f"U: lr {params.lr:g}, {params.steps} steps, BatchNorm {params.bn_policy}" if params is not None
               else spec.describe())
        return (f"adapted {seg.base.described} to {len(self.support)} pair(s) of {len(self.classes)} objects "
                f"({', '.join(self.classes)}; {seg.strategy}) with {how}; seed {int(seed)}")

    @property
    def fine_tuned(self) -> bool:
        """Whether the adapted network is one new network (U, one object), which can be exported to ONNX."""
        return isinstance(self.segmenter, FewShotSegmenter) and self.settings.get("update_params") is not None

    @property
    def savable(self) -> bool:
        """Whether the fitted segmenter can be downloaded (every method but the random forest, which needs pickle)."""
        return self.segmenter is not None and self.settings.get("method", {}).get("method") != "rf"

    def segment(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, overlay, mask) per query at its own size, all queries in one call as `fewshotseg adapt` predicts
        them (the same masks: under U's transductive BatchNorm regime the query batch normalises itself; otherwise
        each query's mask does not depend on the others)."""
        self._check_open()
        if self.segmenter is None:
            raise UserError("adapt first: label the support images, then press Adapt (queries are segmented by "
                            "the adapted network)")
        if not self.queries:
            raise UserError("no query image yet: upload the images to segment")
        preds = self.segmenter.predict([q.rgb for q in self.queries])
        if isinstance(self.segmenter, MultiClassSegmenter):  # the label map, each object in its palette colour
            self.results = [(q.name, label_overlay(q.rgb, p.labels), p.labels)
                            for q, p in zip(self.queries, preds, strict=True)]
            self.contested = {q.name: p.contested for q, p in zip(self.queries, preds, strict=True)}
        else:
            self.results = [(q.name, overlay(q.rgb, p.mask), p.mask) for q, p in zip(self.queries, preds, strict=True)]
        return self.results

    # ------------------------------------------------------------------------------------------ downloads

    def masks_zip(self) -> Path:
        """masks/<query>_mask.png (0/255, each at its query's size), support/<image>_mask.png (the masks used,
        painted and corrected ones included) and settings.json (what `fewshotseg adapt` needs to give the same masks:
        its `support` lists the pairs the adaptation used; a correction made since counts from the next Adapt, and
        `corrected` gives each corrected pair's share of pixels changed).

        With several objects, as `fewshotseg adapt` writes them: each `_mask.png` is an indexed palette PNG (0
        background, k the k-th object; `classes.txt` beside them names the values, so support/ with its images is
        a support folder `adapt` reads), each query also has masks/<query>_<object>_mask.png (0/255, no two
        overlapping), and settings.json gives each query's contested pixels."""
        if not self.results and not self.corrections():
            raise UserError("nothing to download yet: adapt, then segment query images")
        path = self.folder / "downloads" / "masks.zip"
        path.parent.mkdir(exist_ok=True)
        several = self.multiclass
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, _, mask in self.results:
                z.writestr(f"masks/{Path(name).stem}_mask.png", _png(mask, indexed=several))
                for k, c in enumerate(self.classes if several else [], start=1):
                    z.writestr(f"masks/{Path(name).stem}_{c}_mask.png", _png(mask == k))
            for p in self.support:
                if p.mask is not None:
                    z.writestr(f"support/{Path(p.name).stem}_mask.png",
                               _png(p.labels(self.classes) if several else p.mask, indexed=several))
            settings = {**self.settings, "corrected": dict(self.corrections())}
            if several:
                listed = "".join(f"{c}\n" for c in self.classes)
                z.writestr("masks/classes.txt", listed)
                z.writestr("support/classes.txt", listed)
                settings["contested_pixels"] = {n: self.contested.get(n, 0) for n, _, _ in self.results}
            z.writestr("settings.json", json.dumps(settings, indent=2) + "\n")
        return path

    def weights(self) -> Path:
        """The fitted segmenter's model.safetensors (its card.json and README.md, and for a frozen-feature method
        the fitted head's adapter.safetensors, are written beside it); with several objects, the folder the
        `MultiClassSegmenter` saves, zipped (adapted.zip: unzipped, `predict --model` and `from_pretrained` read it)."""
        if self.segmenter is None:
            raise UserError("adapt first: there are no adapted weights yet")
        downloads = self.folder / "downloads"
        if isinstance(self.segmenter, MultiClassSegmenter):
            shutil.rmtree(downloads / "adapted", ignore_errors=True)
            folder = self.segmenter.save_pretrained(downloads / "adapted")
            path = downloads / "adapted.zip"
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
                for f in sorted(folder.rglob("*")):
                    if f.is_file():
                        z.write(f, f"adapted/{f.relative_to(folder).as_posix()}")
            return path
        folder = self.segmenter.save_pretrained(downloads / "adapted")
        return folder / "model.safetensors"

    def onnx(self) -> Path:
        if self.segmenter is None:
            raise UserError("adapt first: there is no adapted network to export yet")
        if not isinstance(self.segmenter, FewShotSegmenter):
            raise UserError("ONNX exports the one network of one object; with several objects download the adapted "
                            "segmenter (zip) and use fewshotseg predict --model")
        path = self.folder / "downloads" / "adapted.onnx"
        path.parent.mkdir(exist_ok=True)
        try:
            export_onnx(copy.deepcopy(self.segmenter.model).cpu(), self.segmenter.size, path)
        except ImportError as err:
            raise UserError(f"ONNX export needs the onnx extra: pip install 'fewshotseg[onnx]' ({err})") from None
        return path

    # ------------------------------------------------------------------------------------------ life

    def close(self) -> None:
        """Remove the session's folder and drop its images and network (the session ended)."""
        self.closed = True
        self.support, self.queries, self.results, self.segmenter, self.contested = [], [], [], None, {}
        shutil.rmtree(self.folder, ignore_errors=True)

    def _check_open(self) -> None:
        if self.closed:
            raise UserError("this session has ended: reload the page")

    def _forget_adaptation(self) -> None:
        self.segmenter, self.results, self.contested = None, [], {}


def _at_size(mask: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool of a painted mask (nonzero = object) on `rgb`'s grid, resized if the canvas was another size."""
    m = np.asarray(mask).astype(bool)
    if m.shape != rgb.shape[:2]:
        h, w = rgb.shape[:2]
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
    return m


def _check_foreground(mask: np.ndarray, name: str, source: str, cls: str = "") -> None:
    if not mask.any():
        what = f"the {cls}" if cls else "the object"
        how = f"upload a mask that marks {what if cls else 'it'}" if source == "uploaded" else \
            f"paint over {what} with the brush"
        raise UserError(f"the {source} {cls + ' ' if cls else ''}mask of {name} has no foreground: {how}")


def _given(masks: dict[str, np.ndarray], cls: str, m: np.ndarray, name: str) -> tuple[dict[str, np.ndarray], str]:
    """`masks` with `cls` set to `m`, the pixels of `m` taken from the other objects (a pixel is one object's), and a
    note of how many pixels each other object lost."""
    out, moved = {}, []
    for c, other in masks.items():
        if c == cls:
            continue
        both = int((other & m).sum())
        if both:
            moved.append(f"{both} px from {c}")
            other = other & ~m
        if other.any():
            out[c] = other
    out[cls] = m
    note = (f"{name}: {', '.join(moved)} now belong to {cls} (a pixel belongs to one object: the one marked last)"
            if moved else "")
    return out, note


def _safe_name(name: str) -> str:
    """A file name from the browser reduced to letters, digits, '.', '-', '_' (no folders, no leading dot)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name.replace("\\", "/")).name).lstrip(".")
    return name[-100:] or "image"


def _unique(name: str, taken: set[str]) -> str:
    stem, suffix = Path(name).stem, Path(name).suffix
    n, out = 2, name
    while out in taken or Path(out).stem in {Path(t).stem for t in taken}:
        out = f"{stem}_{n}{suffix}"
        n += 1
    return out


def _png(mask: np.ndarray, indexed: bool = False) -> bytes:
    """PNG bytes of a binary mask (0/255), or of a label map as an indexed palette PNG (`indexed`)."""
    import io

    from fewshotseg.data.exports import label_png

    buf = io.BytesIO()
    (label_png(mask) if indexed else Image.fromarray(mask.astype(np.uint8) * 255)).save(buf, format="PNG")
    return buf.getvalue()
