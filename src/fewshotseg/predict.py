"""`fewshotseg predict`: apply a fitted segmenter to a folder tree of any size.

    --images tree --(the segmenter `adapt --save-weights` or `save_pretrained` wrote)--> --out:
        masks/<relative folder>/<name>_mask.png     --format png: 0/255 at the image's own (upright) size
        labels/<relative folder>/<name>.txt         --format yolo: Ultralytics segmentation rows, class 0
        coco-records/<relative folder>/<name>.json  --format coco: one image's record, assembled at the end into
        coco.json                                   COCO instances (RLE, or polygons with --coco-polygons)
        unreadable/<relative path>.json             an image that could not be read, and why (until it changes)
        predict.json                                what was done: counts, every skipped file and why, timings
        predict-settings.json                       what every output here was predicted with (checked on re-runs)
        .predict-written/<host>-<pid>.jsonl         every file above that predict wrote here (one per process)

A segmenter of several classes (`MultiClassSegmenter.save_pretrained`'s folder) writes the same files: each PNG an
indexed palette PNG (0 background, k class k; `classes.txt` names them), YOLO rows with class ids 0..K-1, and COCO
one category per class (ids 1..K) with one annotation per image and class present; `predict.json` counts the pixels
that two or more classes claimed (each given to the most probable one).

Images are listed once (sorted relative paths; hidden files and folders left out; `*_mask.png`, a `.png` beside a
same-name `.jpg`, and files that are not .jpg/.jpeg/.png listed as skipped), then cut into batches of `--batch-size`
consecutive images. A batch is the unit of everything: it is read, predicted and written by one worker (the parent,
or one of `--workers` processes, each loading the segmenter once, one torch thread each), so only a few batches of
pixels are ever in memory. `--shard I/N` takes the batches whose index % N == I. Since a network's floating-point
sums depend on the batch an image is in, fixing the batches fixes every mask: one run, N shards, a resumed run and
any number of workers write identical files.

Every output is written to `<out>/.partial/` and renamed into place, so a killed run leaves whole files only; each
is noted in `<out>/.predict-written/` before it is renamed into place. A re-run skips the batches whose outputs all
exist (or whose unreadable files are unchanged) and predicts the others again (writing only the missing files). Only
outputs that predict noted are trusted: any other file where predict would write (the user's own masks, coco.json,
...) is refused before any work, unless --overwrite. An --images tree with no image to label is refused too.
`predict-settings.json` refuses a re-run into the same --out with another segmenter, threshold, batch size, tiling
or polygon tolerance (whose outputs would not match the ones there) unless --overwrite.

BatchNorm: under U's `transductive` policy the images of one batch normalise each other, so a mask depends on its
batch (`predict.json` says so); under `support`, `paper` and the frozen-feature methods each image is independent
of the others. Images over `--tile-above` pixels are optionally predicted in overlapping `--tile` x `--tile` tiles
(each resized to the network's input, like a whole image), their probabilities averaged where tiles overlap.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fewshotseg.data.dataset import DataError
from fewshotseg.data.images import IMAGE_SUFFIXES
from fewshotseg.errors import UserError
from fewshotseg.runs.workers import process_alive

FORMATS = ("png", "coco", "yolo")
PARTIAL = ".partial"
RECORD = ".predict-written"  # the files predict wrote into --out: one file per process, a JSON path per line
SETTINGS_FILE = "predict-settings.json"
ADAPT_FIRST = ("adapt it first: `fewshotseg adapt --support DIR --query DIR --out DIR --save-weights` writes "
               "DIR/adapted/, or in Python FewShotSegmenter.fit(...) then save_pretrained(folder)")


@dataclass
class PredictOptions:
    model: str  # a fitted segmenter's folder (card.json + model.safetensors [+ adapter.safetensors])
    images: str  # the folder tree to label
    out: str
    formats: tuple[str, ...] = ("png",)
    label: str = ""  # the COCO category's name; "" = the card's name
    coco_polygons: bool = False  # COCO segmentation as outer-contour polygons instead of RLE
    polygon_tolerance: float = 0.0  # px: polygon simplification (COCO polygons, YOLO); 0: the pixel outline
    threshold: float = 0.5
    batch_size: int = 8
    workers: int = 1
    device: str = "auto"
    shard: str = "0/1"
    tile: int = 0  # tile side in image pixels; 0: never tile
    overlap: int = 64
    tile_above: int = 0  # tile images of more pixels than this; 0: images with a side over --tile
    overwrite: bool = False
    progress: bool = True


@dataclass(frozen=True)
class Job:
    """What a worker needs, picklable: the same for every batch."""

    model: str
    root: str
    out: str
    formats: tuple[str, ...]
    threshold: float
    batch_size: int
    tile: int
    overlap: int
    tile_above: int
    polygon_tolerance: float
    device: str
    overwrite: bool
    classes: tuple[str, ...] = ()  # a segmenter of several classes: their names (class k = classes[k - 1])


# ------------------------------------------------------------------------------------------ checks


def parse_formats(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    parts = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    bad = [p for p in parts if p not in FORMATS]
    if bad or not parts:
        raise UserError(f"--format {','.join(parts) or text!r}: choose one or more of {', '.join(FORMATS)}, "
                        "comma-separated (e.g. --format png,coco)")
    return tuple(f for f in FORMATS if f in parts)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: write I/N, e.g. --shard 0/4 for the first of 4 shards") from None
    if count < 1 or not 0 <= index < count:
        raise UserError(f"--shard {text}: I must be between 0 and N-1 (N >= 1), e.g. 0/4 ... 3/4")
    return index, count


def check_options(opts: PredictOptions) -> None:
    if not 0 < opts.threshold < 1:
        raise UserError(f"--threshold {opts.threshold}: a probability strictly between 0 and 1")
    if opts.batch_size < 1 or opts.workers < 1:
        raise UserError("--batch-size and --workers must be at least 1")
    if opts.tile:
        if opts.tile < 16:
            raise UserError(f"--tile {opts.tile}: a tile of at least 16 px (0 turns tiling off)")
        if not 0 <= opts.overlap < opts.tile:
            raise UserError(f"--overlap {opts.overlap}: between 0 and --tile - 1 ({opts.tile - 1}) px")
        if opts.tile_above < 0:
            raise UserError(f"--tile-above {opts.tile_above}: a pixel count (0: images with a side over --tile)")
    if opts.polygon_tolerance < 0:
        raise UserError(f"--polygon-tolerance {opts.polygon_tolerance}: a distance in px, 0 or more")


def check_model(folder: str | Path) -> dict[str, Any]:
    """The card of a fitted segmenter's folder, or a UserError that says to adapt first."""
    from fewshotseg.initializations.card import CARD_FILE, read_card

    path = Path(folder)
    if path.is_file() and path.name in ("model.safetensors", CARD_FILE):
        path = path.parent
    if not path.is_dir():
        raise UserError(f"--model {folder}: no such folder; pass the folder of a fitted segmenter ({ADAPT_FIRST})")
    card = read_card(path)
    if card is None:
        raise UserError(f"--model {folder} has no {CARD_FILE}, so it is not a fitted segmenter; {ADAPT_FIRST}")
    if not (card.adaptation or {}).get("fitted"):
        raise UserError(f"--model {folder} holds an initialization ({card.name}), not a segmenter fitted to your "
                        f"labelled images; {ADAPT_FIRST}")
    return {"folder": path, "card": card}


def transductive(card) -> bool:
    """Whether the saved fit normalises each prediction batch with its own statistics (U's transductive policy)."""
    adaptation = card.adaptation or {}
    params = (adaptation.get("fitted") or {}).get("update_params") or {}
    return adaptation.get("method") == "finetune" and params.get("bn_policy") == "transductive"


def check_out(images: Path, out: Path) -> None:
    """Refuse an --out inside --images, or one that cannot be written, before any work."""
    root, target = images.resolve(), out.resolve()
    if target == root or root in target.parents:
        raise UserError(f"--out {out} is inside --images {images}: outputs would be listed as images on a re-run "
                        "and mixed with yours; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"--out {out} cannot be written ({err.strerror or err}); choose a folder you can write to, "
                        "or fix its permissions") from None


# ------------------------------------------------------------------------------------------ the tree


@dataclass
class Listing:
    images: list[str] = field(default_factory=list)  # relative posix paths, sorted
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"file": relative path, "reason": ...}


def list_tree(root: Path) -> Listing:
    """Every image of the tree, and every other file with the reason it is left out (see the module docstring)."""
    listing = Listing()

    def unreadable(err: OSError) -> None:
        listing.skipped.append({"file": _rel(Path(err.filename or root), root),
                                "reason": f"folder cannot be read ({err.strerror}); check its permissions"})

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if (here / d).is_symlink():
                listing.skipped.append({"file": _rel(here / d, root), "reason": "a link to a folder (not followed; "
                                        "pass its target as --images to label it)"})
        files = sorted(f for f in filenames if not f.startswith("."))
        jpeg_stems = {Path(f).stem for f in files if Path(f).suffix.lower() in (".jpg", ".jpeg")}
        names: dict[str, str] = {}
        for f in files:
            rel, stem, suffix = _rel(here / f, root), Path(f).stem, Path(f).suffix.lower()
            if suffix not in IMAGE_SUFFIXES:
                listing.skipped.append({"file": rel, "reason": "not a .jpg/.jpeg/.png image"})
            elif suffix == ".png" and (stem.endswith("_mask") or stem in jpeg_stems):
                listing.skipped.append({"file": rel, "reason": "a mask (named *_mask.png, or a .png beside a "
                                        "same-name .jpg), not an image to label"})
            elif stem in names:
                listing.skipped.append({"file": rel, "reason": f"shares its name with {names[stem]}: their outputs "
                                        "would overwrite each other; rename one"})
            else:
                names[stem] = rel
                listing.images.append(rel)
    listing.images.sort()
    listing.skipped.sort(key=lambda s: s["file"])
    return listing


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def outputs(out: Path, rel: str, formats: tuple[str, ...]) -> dict[str, Path]:
    """The files `predict` writes for the image at relative path `rel`, by format."""
    parent, stem = Path(rel).parent, Path(rel).stem
    where = {"png": out / "masks" / parent / f"{stem}_mask.png", "yolo": out / "labels" / parent / f"{stem}.txt",
             "coco": out / "coco-records" / parent / f"{stem}.json"}
    return {f: where[f] for f in formats}


def batches_of(images: list[str], batch_size: int, shard: tuple[int, int]) -> list[tuple[int, list[str]]]:
    """(index, images) of this shard's batches: consecutive `batch_size` images of the sorted listing, those whose
    index % N == I."""
    index, count = shard
    return [(k, images[i:i + batch_size]) for k, i in enumerate(range(0, len(images), batch_size))
            if k % count == index]


def unreadable_marker(out: Path, rel: str) -> Path:
    return out / "unreadable" / f"{rel}.json"


def known_unreadable(out: Path, root: Path, rel: str) -> dict[str, Any] | None:
    """The record of an earlier run that could not read this image, while the file is unchanged since."""
    marker = unreadable_marker(out, rel)
    if not marker.is_file():
        return None
    try:
        record, stat = json.loads(marker.read_text()), (root / rel).stat()
    except (OSError, json.JSONDecodeError):
        return None
    return record if [record.get("size"), record.get("mtime_ns")] == [stat.st_size, stat.st_mtime_ns] else None


def done(out: Path, root: Path, rel: str, formats: tuple[str, ...]) -> bool:
    """Whether the image needs nothing more: every output written, or it could not be read and is unchanged since
    (trusted once `check_not_theirs` has found that every existing output is predict's own)."""
    return all(p.is_file() for p in outputs(out, rel, formats).values()) or known_unreadable(out, root, rel) is not None


def no_images(images: Path, listing: Listing) -> UserError:
    """The error for an --images tree with nothing to label: what was skipped there, and why."""
    skipped = listing.skipped
    what = (f"holds no image to label ({len(skipped)} file(s) skipped)" if skipped
            else "holds no image to label (it is empty, or holds hidden files only)")
    lines = "".join(f"\n  skipped {s['file']}: {s['reason']}" for s in skipped[:10])
    more = f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    return UserError(f"--images {images} {what}: predict reads .jpg, .jpeg and .png images (in sub-folders too; "
                     "masks, hidden files and hidden folders are left out); pass the folder that holds the images to "
                     f"label{lines}{more}")


class Record:
    """This process's note of the files it writes into --out (`<out>/.predict-written/<host>-<pid>.jsonl`): a path is
    noted before its file is renamed into place, so whatever predict wrote there is noted, even after a kill."""

    def __init__(self, out: Path):
        self.out = out
        self.fd: int | None = None

    def add(self, path: Path) -> None:
        if self.fd is None:
            folder = self.out / RECORD
            folder.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(folder / f"{host_id()}-{os.getpid()}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                              0o666)
        os.write(self.fd, (json.dumps(path.relative_to(self.out).as_posix()) + "\n").encode())  # one whole line

    def write_text(self, path: Path, text: str) -> None:
        """A whole file of predict's own beside the outputs (settings, summary, coco.json ...): noted, then
        written atomically."""
        from fewshotseg.runs.run_dir import atomic_write

        self.add(path)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def recorded(out: Path) -> set[str]:
    """The paths (relative to `out`) of every file predict noted writing there (a line a kill cut short is left out:
    its file was not renamed into place)."""
    found: set[str] = set()
    folder = out / RECORD
    if not folder.is_dir():
        return found
    for path in folder.iterdir():
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                rel = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rel, str):
                found.add(rel)
    return found


def check_not_theirs(out: Path, planned: Iterable[Path]) -> None:
    """Refuse (before any work) when --out holds a file predict would write but did not write there itself: the
    user's own, or one of another program; an output predict noted writing is its own (resumed, or skipped)."""
    if not (out / RECORD).is_dir() and (out / SETTINGS_FILE).is_file():
        return  # a folder an earlier fewshotseg's predict wrote, before it kept a note: its outputs resume as then
    existing = [p for p in planned if p.is_file() or p.is_symlink()]
    if not existing:
        return
    mine = recorded(out)  # read after the files were seen: a file another shard renamed into place is noted by then
    theirs = [p for p in existing if p.relative_to(out).as_posix() not in mine]
    if theirs:
        shown = ", ".join(p.relative_to(out).as_posix() for p in theirs[:3])
        shown += f" and {len(theirs) - 3} more" if len(theirs) > 3 else ""
        raise UserError(f"--out {out} already holds {len(theirs)} file(s) predict would write but did not write there "
                        f"itself ({shown}); pass --overwrite to replace them, or choose another --out")


# ------------------------------------------------------------------------------------------ writing


class Writer:
    """Whole files only: each output is written in `<out>/.partial/` and renamed into place."""

    def __init__(self, out: Path):
        self.partial = out / PARTIAL
        self.partial.mkdir(parents=True, exist_ok=True)
        self.prefix = f"{host_id()}-{os.getpid()}-"
        self.count = 0
        self.record = Record(out)

    def write(self, path: Path, write: Callable[[Path], None]) -> None:
        self.count += 1
        tmp = self.partial / f"{self.prefix}{self.count}.tmp"
        try:
            write(tmp)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.record.add(path)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def host_id() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def clean_partial(out: Path) -> int:
    """Remove what killed runs of this machine left in `<out>/.partial/` (files of live processes, and of other
    machines sharing the folder, are theirs); the number removed."""
    folder, removed = out / PARTIAL, 0
    if not folder.is_dir():
        return 0
    for path in folder.iterdir():
        host, _, rest = path.name.partition("-")
        pid = rest.partition("-")[0]
        if host != host_id() or not pid.isdigit() or process_alive(int(pid)):
            continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def write_image_outputs(writer: Writer, job: Job, rel: str, mask: np.ndarray) -> None:
    """One image's outputs: `mask` (H, W) bool, or for a segmenter of several classes a label map (H, W) uint8."""
    from fewshotseg.data.exports import coco_record, outer_polygons, yolo_text

    paths = outputs(Path(job.out), rel, job.formats)
    todo = {f: p for f, p in paths.items() if job.overwrite or not p.is_file()}
    if job.classes:
        write_label_outputs(writer, job, rel, mask, todo)
        return
    if "png" in todo:
        writer.write(todo["png"], lambda tmp: Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG"))
    polygons = outer_polygons(mask, job.polygon_tolerance) if {"yolo", "coco"} & set(todo) else []
    if "yolo" in todo:
        h, w = mask.shape
        text = yolo_text(polygons, w, h)
        writer.write(todo["yolo"], lambda tmp: tmp.write_text(text))
    if "coco" in todo:
        record = json.dumps(coco_record(rel, mask, polygons=polygons), separators=(",", ":"))
        writer.write(todo["coco"], lambda tmp: tmp.write_text(record + "\n"))


def write_label_outputs(writer: Writer, job: Job, rel: str, labels: np.ndarray, todo: dict[str, Path]) -> None:
    from fewshotseg.data.exports import coco_labels_record, label_png, yolo_labels_text

    k = len(job.classes)
    if "png" in todo:
        writer.write(todo["png"], lambda tmp: label_png(labels).save(tmp, format="PNG"))
    if "yolo" in todo:
        text = yolo_labels_text(labels, k, job.polygon_tolerance)
        writer.write(todo["yolo"], lambda tmp: tmp.write_text(text))
    if "coco" in todo:
        record = json.dumps(coco_labels_record(rel, labels, k, job.polygon_tolerance), separators=(",", ":"))
        writer.write(todo["coco"], lambda tmp: tmp.write_text(record + "\n"))


# ------------------------------------------------------------------------------------------ prediction


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) of overlapping tiles covering the image: `tile` px apart by `tile - overlap`,
    the last of each row and column flush with the image's edge (a side shorter than a tile: one tile)."""
    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        found = list(range(0, length - tile, tile - overlap))
        return found + [length - tile]

    return [(y, x, min(y + tile, height), min(x + tile, width)) for y in starts(height) for x in starts(width)]


def tiled_probability(predict: Callable[[list[np.ndarray]], list[np.ndarray]], rgb: np.ndarray, tile: int,
                      overlap: int, batch_size: int, together: bool) -> np.ndarray:
    """(H, W) probability of a large image from its tiles' probabilities (`predict`: tiles -> probability maps at
    their own size), averaged where tiles overlap. `together`: every tile in one call (a transductive batch).
    Maps of several classes (K, h, w) give (K, H, W)."""
    h, w = rgb.shape[:2]
    boxes = tile_boxes(h, w, tile, overlap)
    total: np.ndarray | None = None
    count = np.zeros((h, w), np.float32)
    step = len(boxes) if together else batch_size
    for i in range(0, len(boxes), step):
        chunk = boxes[i:i + step]
        for (y0, x0, y1, x1), p in zip(chunk, predict([rgb[y0:y1, x0:x1] for y0, x0, y1, x1 in chunk]),
                                       strict=True):
            if total is None:
                total = np.zeros((*p.shape[:-2], h, w), np.float32)
            total[..., y0:y1, x0:x1] += p
            count[y0:y1, x0:x1] += 1
    assert total is not None
    return total / count


def _tiled(job: Job, shape: tuple[int, ...]) -> bool:
    h, w = shape[:2]
    if not job.tile:
        return False
    return h * w > job.tile_above if job.tile_above else max(h, w) > job.tile


def predict_batch(seg, job: Job, rels: list[str], writer: Writer, together: bool) -> list[dict[str, Any]]:
    """Read, predict and write one batch; one result per image ({"file", "foreground"} or {"file", "error"})."""
    from fewshotseg.data.images import load_image

    root, out = Path(job.root), Path(job.out)
    results: list[dict[str, Any]] = []
    loaded: list[tuple[str, np.ndarray]] = []
    for rel in rels:
        try:
            loaded.append((rel, load_image(root / rel, rel)))
        except DataError as err:
            reason = getattr(err, "reason", str(err))
            results.append({"file": rel, "error": reason})
            try:  # remembered, so that a re-run does not read it again until the file changes
                stat = (root / rel).stat()
            except OSError:
                continue
            record = json.dumps({"file": rel, "reason": reason, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
            writer.write(unreadable_marker(out, rel), lambda tmp, text=record: tmp.write_text(text + "\n"))
    whole = [(rel, rgb) for rel, rgb in loaded if not _tiled(job, rgb.shape)]
    masks: dict[str, np.ndarray] = {}  # (H, W) bool, or label maps (H, W) uint8 of several classes
    contested: dict[str, int] = {}  # several classes: the pixels two or more of them claimed
    if whole:
        preds = seg.predict([rgb for _, rgb in whole], threshold=job.threshold, batch_size=job.batch_size)
        masks.update((rel, p.labels if job.classes else p.mask) for (rel, _), p in zip(whole, preds, strict=True))
        if job.classes:
            contested.update((rel, p.contested) for (rel, _), p in zip(whole, preds, strict=True))

    def tiles(images: list[np.ndarray]) -> list[np.ndarray]:
        if job.classes:
            return seg.probabilities(images, batch_size=job.batch_size)
        return [p.probability for p in seg.predict(images, threshold=job.threshold, batch_size=job.batch_size)]

    from fewshotseg.multiclass import resolve  # (torch is loaded by now: the segmenter predicted)

    for rel, rgb in loaded:
        if rel not in masks:
            prob = tiled_probability(tiles, rgb, job.tile, job.overlap, job.batch_size, together)
            if job.classes:
                masks[rel], contested[rel] = resolve(prob, job.threshold)
            else:
                masks[rel] = prob > job.threshold
    for rel, _ in loaded:
        mask = masks.pop(rel)
        write_image_outputs(writer, job, rel, mask)
        unreadable_marker(out, rel).unlink(missing_ok=True)  # read at last (the file was replaced)
        results.append({"file": rel, "foreground": round(float((mask > 0).mean()), 6)}
                       | ({"contested": contested[rel]} if job.classes else {}))
    return results


def load_segmenter(job: Job):
    if job.classes:
        from fewshotseg.multiclass import MultiClassSegmenter

        return MultiClassSegmenter.from_pretrained(job.model, device=job.device)
    from fewshotseg.segmenter import FewShotSegmenter

    return FewShotSegmenter.from_pretrained(job.model, device=job.device)


_WORKER: dict[str, Any] = {}


def _init_worker(job: Job, together: bool) -> None:
    """A worker process: one torch thread, the segmenter loaded once (an error is raised with its first batch)."""
    import torch

    torch.set_num_threads(1)
    try:
        _WORKER.update(seg=load_segmenter(job), job=job, together=together, writer=Writer(Path(job.out)))
    except Exception as err:  # a Pool whose initializer raises starts new workers forever: report it instead
        _WORKER["error"] = err


def _work(batch: tuple[int, list[str]]) -> tuple[list[dict[str, Any]], float | None]:
    if "error" in _WORKER:
        raise _WORKER["error"]
    results = predict_batch(_WORKER["seg"], _WORKER["job"], batch[1], _WORKER["writer"], _WORKER["together"])
    return results, peak_rss_mb()


def _run(job: Job, todo: list[tuple[int, list[str]]], workers: int, together: bool, writer: Writer
         ) -> Iterator[tuple[list[dict[str, Any]], float | None]]:
    """Each batch's results as it finishes, with the peak memory (MB) of the worker that predicted it (None: this
    process): in this process (writing with `writer`), or in `workers` processes."""
    if not todo:
        return
    if workers == 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each worker: the same sums, so the same masks, whatever --workers says
        try:
            seg = load_segmenter(job)
            for _, rels in todo:
                yield predict_batch(seg, job, rels, writer, together), None
        finally:
            torch.set_num_threads(threads)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's thread pools
    with context.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(job, together)) as pool:
        yield from pool.imap_unordered(_work, todo, chunksize=1)


# ------------------------------------------------------------------------------------------ the command


def settings_of(opts: PredictOptions, model: dict[str, Any]) -> dict[str, Any]:
    """What makes an output what it is: a re-run into the same --out must agree on all of it."""
    from fewshotseg.initializations.card import sha256

    folder = model["folder"]
    weights = {p.relative_to(folder).as_posix(): sha256(p)  # the network(s), fitted heads (one per class)
               for p in sorted(folder.rglob("*.safetensors"))}
    tiling = {"tile": opts.tile, "overlap": opts.overlap if opts.tile else 0,
              "tile_above": opts.tile_above if opts.tile else 0}
    return {"model": model["card"].name, "weights_sha256": weights, "threshold": opts.threshold,
            "batch_size": opts.batch_size, **tiling, "polygon_tolerance": opts.polygon_tolerance}


def check_settings(out: Path, settings: dict[str, Any], overwrite: bool, record: Record) -> None:
    """Refuse to add outputs of other settings to a folder (unless --overwrite); record these settings."""

    path = out / SETTINGS_FILE
    if path.is_file() and not overwrite:
        try:
            before = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"{path}: unreadable ({err}); delete it to predict into {out} again") from None
        differ = [k for k in settings if before.get(k) != settings[k]]
        if differ:
            shown = "; ".join(f"{k}: {before.get(k)} there, {settings[k]} now" for k in differ)
            raise UserError(f"--out {out} holds outputs predicted with other settings ({shown}); a re-run only adds "
                            "the missing images, so the folder would mix the two. Choose another --out, or pass "
                            "--overwrite to predict every image again")
        if before == settings:
            return
    record.write_text(path, json.dumps(settings, indent=1) + "\n")


def suffix_of(shard: tuple[int, int]) -> str:
    return "" if shard[1] == 1 else f"-shard-{shard[0]}-of-{shard[1]}"


def predict_folder(opts: PredictOptions) -> dict[str, Any]:
    """Label every image of `opts.images` (see the module docstring); returns the summary written to predict.json."""
    started = time.perf_counter()
    formats = parse_formats(opts.formats)
    shard = parse_shard(opts.shard)
    check_options(opts)
    images, out = Path(opts.images), Path(opts.out)
    if not images.is_dir():
        raise UserError(f"--images {images}: " + ("a file; pass the folder that holds the images" if images.exists()
                                                  else "no such folder; pass the folder of images to label"))
    model = check_model(opts.model)
    classes = tuple((model["card"].adaptation or {})["fitted"].get("classes") or ())
    if classes and opts.label:
        raise UserError(f"--label names the one COCO category of a one-class segmenter; {opts.model} segments "
                        f"{len(classes)} classes, each its own category ({', '.join(classes)}): leave --label out")
    listing = list_tree(images)
    if not listing.images:
        raise no_images(images, listing)
    check_out(images, out)
    mine = batches_of(listing.images, opts.batch_size, shard)
    coco_file = out / f"coco{suffix_of(shard)}.json" if "coco" in formats else None
    summary_file = out / f"predict{suffix_of(shard)}.json"
    if not opts.overwrite:
        own = [out / SETTINGS_FILE, summary_file] + ([coco_file] if coco_file else []) + \
            ([out / "classes.txt"] if classes else [])
        check_not_theirs(out, (p for p in own + [q for _, rels in mine for rel in rels
                                                 for q in (*outputs(out, rel, formats).values(),
                                                           unreadable_marker(out, rel))]))
    writer = Writer(out)  # (creates <out>/.partial/)
    try:
        return _predict(opts, model, classes, formats, shard, listing, mine, coco_file, summary_file, writer, started)
    finally:
        writer.record.close()


def _predict(opts: PredictOptions, model: dict[str, Any], classes: tuple[str, ...], formats: tuple[str, ...],
             shard: tuple[int, int], listing: Listing, mine: list[tuple[int, list[str]]], coco_file: Path | None,
             summary_file: Path, writer: Writer, started: float) -> dict[str, Any]:
    from tqdm import tqdm

    from fewshotseg import __version__
    from fewshotseg.data.exports import coco_document
    from fewshotseg.runs.device import choose_device

    images, out = Path(opts.images), Path(opts.out)


    check_settings(out, settings_of(opts, model), opts.overwrite, writer.record)
    clean_partial(out)
    device = "cpu" if opts.device == "cpu" else str(choose_device(opts.device))  # torch only where needed
    together = transductive(model["card"])
    job = Job(model=str(model["folder"]), root=str(images), out=str(out), formats=formats,
              threshold=opts.threshold, batch_size=opts.batch_size, tile=opts.tile, overlap=opts.overlap,
              tile_above=opts.tile_above, polygon_tolerance=opts.polygon_tolerance, device=device,
              overwrite=opts.overwrite, classes=classes)

    # done by an earlier run of predict (every existing output is predict's own: check_not_theirs)
    finished = set() if opts.overwrite else {r for _, rels in mine for r in rels if done(out, images, r, formats)}
    todo = [(k, rels) for k, rels in mine if not set(rels) <= finished]
    in_shard = sum(len(rels) for _, rels in mine)
    to_predict = sum(len(rels) for _, rels in todo)  # whole batches: the same sums as a run that was never cut
    failed: dict[str, str] = {}
    written, processed, first, worker_peak, claimed_twice = 0, 0, None, None, 0
    bar = tqdm(total=to_predict, unit="img", desc="predict" + (f" {opts.shard}" if shard[1] > 1 else ""),
               disable=not opts.progress, smoothing=0.05)
    predicting = time.perf_counter()
    try:
        for results, peak in _run(job, todo, opts.workers, together, writer):
            worker_peak = max(worker_peak or 0.0, peak) if peak is not None else worker_peak
            if first is None:
                first = time.perf_counter() - started
            for r in results:
                if "error" in r:
                    failed[r["file"]] = r["error"]
                    continue
                processed += 1
                if r["file"] not in finished:  # an image of a batch predicted again for a missing one: done before
                    written += 1
                    claimed_twice += r.get("contested", 0)
            bar.update(len(results))
    finally:
        bar.close()
    seconds = time.perf_counter() - predicting

    label = opts.label or model["card"].name
    if classes:
        writer.record.write_text(out / "classes.txt", "".join(f"{c}\n" for c in classes))
    if coco_file is not None:
        records = []
        for _, rels in mine:
            for rel in rels:
                path = outputs(out, rel, ("coco",))["coco"]
                if path.is_file():
                    records.append(json.loads(path.read_text()))
        doc = coco_document(records, list(classes) or label, polygons=opts.coco_polygons,
                            info={"description": f"{label}: masks predicted by fewshotseg {__version__}",
                                  "version": __version__})
        writer.record.write_text(coco_file, json.dumps(doc, separators=(",", ":")) + "\n")

    for _, rels in mine:  # unreadable in an earlier run, and still the same file: listed again
        for rel in rels:
            if rel not in failed and (record := known_unreadable(out, images, rel)) is not None:
                failed[rel] = record["reason"]
    summary = {
        "model": str(model["folder"]), "images": str(images), "out": str(out), "formats": list(formats),
        "label": label, "classes": list(classes) or None,
        # pixels of the images predicted by this run that several classes claimed (each given to the likeliest)
        "contested_pixels": claimed_twice if classes else None,
        "shard": f"{shard[0]}/{shard[1]}" if shard[1] > 1 else None, "device": device, "workers": opts.workers,
        "batch_size": opts.batch_size, "threshold": opts.threshold,
        "batchnorm": ("transductive: the images of each batch (--batch-size consecutive images in sorted order) "
                      "are normalised together, so a mask depends on its batch") if together else
                     "each image independent of the others",
        # predicted: images whose outputs this run wrote; already_done: those an earlier run of predict finished
        # (written, or unreadable and unchanged since); the others of the shard failed (listed under "failed")
        "listed": len(listing.images), "in_shard": in_shard, "already_done": len(finished),
        "predicted": written, "failed": [{"file": f, "reason": failed[f]} for f in sorted(failed)],
        "skipped": listing.skipped,
        "coco": str(coco_file) if coco_file else None,
        "seconds": round(seconds, 3),
        "images_per_second": round(processed / seconds, 3) if seconds and processed else None,
        "first_mask_seconds": round(first, 3) if first is not None else None,
        "peak_rss_mb": {"this_process": peak_rss_mb(), "largest_worker": worker_peak},
    }
    writer.record.write_text(summary_file, json.dumps(summary, indent=1) + "\n")
    return summary


def peak_rss_mb() -> float | None:
    """This process's peak resident set in MB: /proc's VmHWM where there is one (getrusage's ru_maxrss is not used
    there, since Linux carries the launching process's peak over into it through fork and exec), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    kb = 1024 if sys.platform == "darwin" else 1  # ru_maxrss: bytes on macOS, kilobytes elsewhere
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kb / 1024, 1)


def merge_coco_files(target: str | Path, sources: list[str], *, overwrite: bool = False) -> dict[str, Any]:
    """`predict --merge-coco OUT SHARD.json ...`: one COCO file from the shards' (numbered as one run's)."""
    from fewshotseg.data.exports import merge_coco
    from fewshotseg.runs.run_dir import atomic_write

    target = Path(target)
    if not sources:
        raise UserError("--merge-coco OUT FILE [FILE ...]: give the merged file, then the COCO files to merge")
    if target.exists() and not overwrite and str(target) not in sources:
        raise UserError(f"--merge-coco: {target} exists; choose another name for the merged file, or pass "
                        "--overwrite to replace it")
    documents = []
    for name in sources:
        try:
            documents.append((name, json.loads(Path(name).read_text())))
        except FileNotFoundError:
            raise UserError(f"--merge-coco: {name}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"--merge-coco: {name} is not a JSON file ({err})") from None
    merged = merge_coco(documents)
    text = json.dumps(merged, separators=(",", ":")) + "\n"
    if (target.parent / RECORD).is_dir():  # into predict's --out: noted as predict's own, as the shards' files are
        record = Record(target.parent)
        try:
            record.write_text(target, text)
        finally:
            record.close()
    else:
        atomic_write(target, lambda tmp: Path(tmp).write_text(text))
    return merged
