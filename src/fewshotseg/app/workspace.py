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

Everything the browser sends is read from the upload's own path (a file the web library wrote into the server's
upload folder), checked (size, pixels, decodable), and copied into `folder` under a sanitised name; no name from the
browser is ever used as a path outside it. A file that is not a readable image, or breaks a limit, is refused with
a message (the others of the same upload are kept); every other mistake is a `UserError`; the page shows both.

Adapting is `FewShotSegmenter.fit` with the support statistics and the seed given, and each query is predicted alone,
exactly as `fewshotseg adapt` does: the page's masks equal the command's for the same initialization, update
parameters, seed and support pairs in the same order.

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

from fewshotseg.adapt import export_onnx, overlay
from fewshotseg.data.dataset import DataError
from fewshotseg.data.images import load_image, read_pair
from fewshotseg.errors import UserError
from fewshotseg.segmenter import FewShotSegmenter

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


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
    mask: np.ndarray | None = None  # (H, W) bool on the upright grid
    mask_source: str = ""  # "uploaded", "painted" or "corrected" (a query's prediction, corrected in the page)
    changed: float | None = None  # a corrected pair's share of pixels whose label the correction changed


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
        self.segmenter: FewShotSegmenter | None = None
        self.settings: dict[str, Any] = {}
        self.results: list[tuple[str, np.ndarray, np.ndarray]] = []  # (query name, overlay, mask)
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

    # ------------------------------------------------------------------------------------------ masks

    def pair(self, name: str) -> Pair:
        for p in self.support:
            if p.name == name:
                return p
        raise UserError("choose a support image to label first (upload one, then pick it in the list)")

    def set_mask(self, name: str, mask: str | Path | np.ndarray, source: str = "uploaded") -> None:
        """Give the support image `name` its mask: an uploaded file (any of `adapt`'s mask formats, at the image's
        size) or an (H, W) array painted in the page (nonzero = object; resized to the image if the canvas was)."""
        self._check_open()
        pair = self.pair(name)
        if isinstance(mask, np.ndarray):
            m = _at_size(mask, pair.rgb)
        else:
            self._checked_image(Path(mask))
            try:
                _, m = read_pair(pair.rgb, Path(mask), f"mask of {name}")
            except DataError as err:
                raise UserError(f"the mask of {name}: {getattr(err, 'reason', err)}") from None
        _check_foreground(m, name, source)
        pair.mask, pair.mask_source, pair.changed = m, source, None
        self._forget_adaptation()

    def labelled(self) -> list[Pair]:
        return [p for p in self.support if p.mask is not None]

    # ------------------------------------------------------------------------------------------ corrections

    def prediction(self, name: str) -> Pair:
        """The query `name` with its predicted mask ((H, W) bool at the image's size) as `mask`."""
        if not self.results:
            raise UserError("no prediction to correct yet: adapt (or press Segment queries) first, then open a "
                            "predicted query in the correction editor")
        predicted = {n: mask for n, _, mask in self.results}
        for q in self.queries:
            if q.name == name and name in predicted:
                return Pair(q.name, q.path, q.rgb, predicted[name], "predicted")
        raise UserError("choose a predicted query to correct (pick it in the list or click its overlay)")

    def correct(self, name: str, mask: np.ndarray) -> Pair:
        """Move the predicted query `name` into the support set with `mask`, its prediction corrected ((H, W),
        nonzero = object; resized to the image if the canvas was), and record the share of the image's pixels whose
        label the correction changed. Returns the new support pair (renamed if a support image has its name).

        The image leaves the queries: its label is now known, and predicting it again would only echo its support
        mask (and put a second, different mask of it in the download). The other predictions and the adapted
        network stay, so several queries can be corrected before adapting again; the next Adapt uses the corrected
        masks. A refused correction (no foreground, support set full) changes nothing."""
        self._check_open()
        query = self.prediction(name)
        m = _at_size(mask, query.rgb)
        _check_foreground(m, name, "corrected")
        if len(self.support) >= self.limits.max_images:
            raise UserError(f"at most {self.limits.max_images} support images per session (this server's "
                            f"--max-images): remove one before adding {name}")
        new = _unique(name, {p.name for p in self.support})
        dest = self.folder / "support" / new
        dest.parent.mkdir(exist_ok=True)
        shutil.move(query.path, dest)
        pair = Pair(new, dest, query.rgb, m, "corrected", changed=float(np.mean(m != query.mask)))
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
              progress=None) -> str:
        """Adapt `init` to the labelled pairs (in upload order) with `method` (the initialization's own by default;
        `lr` and `steps` set U when it fine-tunes); returns a one-line summary."""
        self._check_open()
        if not self.support:
            raise UserError("no support image yet: upload at least one image of the object and mark it")
        unlabelled = [p.name for p in self.support if p.mask is None]
        if unlabelled:
            raise UserError(f"support image(s) without a mask: {', '.join(unlabelled)}; paint the object or "
                            "upload its mask, or remove the image")
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

    @property
    def fine_tuned(self) -> bool:
        """Whether the adapted network is a new network (U), which can be exported to ONNX."""
        return self.segmenter is not None and self.settings.get("update_params") is not None

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
        self.results = [(q.name, overlay(q.rgb, p.mask), p.mask) for q, p in zip(self.queries, preds, strict=True)]
        return self.results

    # ------------------------------------------------------------------------------------------ downloads

    def masks_zip(self) -> Path:
        """masks/<query>_mask.png (0/255, each at its query's size), support/<image>_mask.png (the masks used,
        painted and corrected ones included) and settings.json (what `fewshotseg adapt` needs to give the same masks:
        its `support` lists the pairs the adaptation used; a correction made since counts from the next Adapt, and
        `corrected` gives each corrected pair's share of pixels changed)."""
        if not self.results and not self.corrections():
            raise UserError("nothing to download yet: adapt, then segment query images")
        path = self.folder / "downloads" / "masks.zip"
        path.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, _, mask in self.results:
                z.writestr(f"masks/{Path(name).stem}_mask.png", _png(mask))
            for p in self.support:
                if p.mask is not None:
                    z.writestr(f"support/{Path(p.name).stem}_mask.png", _png(p.mask))
            settings = {**self.settings, "corrected": dict(self.corrections())}
            z.writestr("settings.json", json.dumps(settings, indent=2) + "\n")
        return path

    def weights(self) -> Path:
        """The fitted segmenter's model.safetensors (its card.json and README.md, and for a frozen-feature method
        the fitted head's adapter.safetensors, are written beside it)."""
        if self.segmenter is None:
            raise UserError("adapt first: there are no adapted weights yet")
        folder = self.segmenter.save_pretrained(self.folder / "downloads" / "adapted")
        return folder / "model.safetensors"

    def onnx(self) -> Path:
        if self.segmenter is None:
            raise UserError("adapt first: there is no adapted network to export yet")
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
        self.support, self.queries, self.results, self.segmenter = [], [], [], None
        shutil.rmtree(self.folder, ignore_errors=True)

    def _check_open(self) -> None:
        if self.closed:
            raise UserError("this session has ended: reload the page")

    def _forget_adaptation(self) -> None:
        self.segmenter, self.results = None, []


def _at_size(mask: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool of a painted mask (nonzero = object) on `rgb`'s grid, resized if the canvas was another size."""
    m = np.asarray(mask).astype(bool)
    if m.shape != rgb.shape[:2]:
        h, w = rgb.shape[:2]
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
    return m


def _check_foreground(mask: np.ndarray, name: str, source: str) -> None:
    if not mask.any():
        how = "upload a mask that marks it" if source == "uploaded" else "paint over the object with the brush"
        raise UserError(f"the {source} mask of {name} has no foreground: {how}")


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


def _png(mask: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()
