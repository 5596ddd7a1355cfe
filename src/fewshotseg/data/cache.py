"""Decode once, then memory-map: what every command uses to get a `SegmentationDataset`.

Decoding and resizing JPEG/PNG pairs costs ~3.5 ms a pair here, reading them back from a memory map ~0.04 ms, and
meta-training samples the same pairs hundreds of times. So `load_dataset` decodes a dataset once per square
size into two uint8 `.npy` files (images (N, S, S, 3), masks (N, S, S)), opened with `np.load(mmap_mode="r")`,
plus `index.json` (classes, offsets, files, original sizes, problems, fingerprint) and, for datasets scored at
the original image size, `originals-*.json` (every mask at its original size, run-length encoded).

Key and freshness: one cache entry per dataset (kind + absolute root + loader options) and size. The entry
records a fingerprint of every data file (relative path, byte size, mtime_ns) and the decoder's version; a
load whose fingerprint differs rebuilds the entry, so touching, replacing, adding or deleting a file is enough.

Location: `<root>/.fewshotseg-cache/` when the dataset folder is writable, else `$FEWSHOTSEG_CACHE_DIR`, else
`~/.cache/fewshotseg/`. A valid entry is read from whichever of these holds one.

Atomicity: arrays are written to temporary files and renamed (`os.replace`) to names unique to the build, and
`index.json`, which names them, is replaced last. The index is the commit point, so a killed build leaves the
old cache (or none) intact, never half a cache; its leftovers are removed by the next build.

Problems found while building are stored in the index and reported again at every load from the cache, once.
A build holds the decoded arrays in memory once before writing them (about 200 kB a pair at 224 px: ~2 GB for
FSS-1000's 10,000 pairs).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
from filelock import FileLock

from fewshotseg.data import fp_k, pascal5i
from fewshotseg.data.dataset import DataError, Problem, SegmentationDataset
from fewshotseg.data.images import report_problems, strict_error
from fewshotseg.data.sources import FOLD_KINDS, DataSource, decode_source, parse_spec, source_files

# Bump whenever decoding rules change: every existing cache is then rebuilt. 2: PASCAL-5i boundaries are IGNORE,
# masks at the original size are kept for scoring.
CACHE_VERSION = 3  # 3: pairs without signal (tiny image, no background, noise mask) are skipped
STALE_TEMP_S = 3600  # temp files older than this belong to a killed build, not to one still running


def cache_locations(source: DataSource) -> list[Path]:
    """Where this dataset's cache may live, in order of preference."""
    fallback = os.environ.get("FEWSHOTSEG_CACHE_DIR") or Path.home() / ".cache" / "fewshotseg"
    return [source.root / ".fewshotseg-cache", Path(fallback).expanduser()]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def entry_name(source: DataSource, size: int) -> str:
    """Folder name of one (dataset, size) cache entry: readable prefix, hash of the absolute root and options."""
    key = hashlib.sha256(json.dumps(source.describe(), sort_keys=True).encode()).hexdigest()[:12]
    return f"{source.kind}-{size}px-{key}"


def fingerprint(source: DataSource) -> str:
    """Hash of the decoder version and every data file's relative path, byte size and mtime_ns."""
    digest = hashlib.sha256(f"fewshotseg-cache-v{CACHE_VERSION}\n".encode())
    rows = []
    for path in source_files(source):
        stat = path.stat()
        rows.append(f"{os.path.relpath(path, source.root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n")
    for row in sorted(rows):
        digest.update(row.encode())
    return digest.hexdigest()


def _index_matches(index: dict, source: DataSource, size: int, stamp: str) -> bool:
    return (
        index.get("version") == CACHE_VERSION
        and index.get("fingerprint") == stamp
        and index.get("size") == size
        and index.get("source") == source.describe()
    )


def _read_entry(entry: Path, source: DataSource, size: int, stamp: str) -> SegmentationDataset | None:
    """The cached dataset, memory-mapped, or None when the entry is missing, stale or unreadable."""
    try:
        index = json.loads((entry / "index.json").read_text())
        if not _index_matches(index, source, size, stamp):
            return None
        images = np.load(entry / index["images"], mmap_mode="r")
        masks = np.load(entry / index["masks"], mmap_mode="r")
        originals = json.loads((entry / index["originals"]).read_text()) if index.get("originals") else None
    except (OSError, ValueError, KeyError):
        return None
    n = len(index["files"])
    if images.shape != (n, size, size, 3) or masks.shape != (n, size, size):
        return None
    if originals is not None and len(originals) != n:
        return None
    return SegmentationDataset(
        root=Path(index["root"]),
        size=size,
        names=index["names"],
        images=images,
        masks=masks,
        offsets={name: (start, count) for name, (start, count) in index["offsets"].items()},
        files=index["files"],
        problems=[Problem(**p) for p in index["problems"]],
        original_sizes=np.asarray(index["original_sizes"], dtype=np.int32).reshape(n, 2),
        originals=originals,
    )


def _replace_atomically(final: Path, write) -> None:
    """Write through `write(file)` to a temp file beside `final`, flush it to disk, then rename it into place."""
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)


BUILD_LOCK = ".build.lock"  # held by the one process that builds an entry (see `cached`)


def _remove_leftovers(entry: Path, keep: set[str]) -> None:
    """Delete arrays of earlier builds and temp files of killed ones (a temp file younger than an hour may
    belong to a build running in another process, so it stays)."""
    now = time.time()
    for path in entry.iterdir():
        try:
            if path.name in keep or (
                path.name.endswith(".tmp") and now - path.stat().st_mtime < STALE_TEMP_S
            ):
                continue
            path.unlink()
        except FileNotFoundError:  # another process cleaned it first
            pass


def _write_entry(entry: Path, source: DataSource, stamp: str, dataset: SegmentationDataset) -> None:
    entry.mkdir(parents=True, exist_ok=True)
    build = uuid.uuid4().hex[:12]
    names = {"images": f"images-{build}.npy", "masks": f"masks-{build}.npy"}
    _replace_atomically(entry / names["images"], lambda f: np.save(f, dataset.images))
    _replace_atomically(entry / names["masks"], lambda f: np.save(f, dataset.masks))
    if dataset.originals is not None:
        names["originals"] = f"originals-{build}.json"
        _replace_atomically(entry / names["originals"], lambda f: f.write(json.dumps(dataset.originals).encode()))
    index = {
        "version": CACHE_VERSION,
        "source": source.describe(),
        "size": dataset.size,
        "fingerprint": stamp,
        "root": str(dataset.root),
        **names,
        "names": dataset.names,
        "offsets": dataset.offsets,
        "files": dataset.files,
        "original_sizes": dataset.original_sizes.tolist(),
        "problems": [{"path": p.path, "reason": p.reason, "action": p.action} for p in dataset.problems],
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _replace_atomically(entry / "index.json", lambda f: f.write(json.dumps(index, indent=1).encode()))
    _remove_leftovers(entry, keep={"index.json", BUILD_LOCK, *names.values()})


def cached(
    source: DataSource, size: int, *, strict: bool = False, progress: bool = True
) -> tuple[SegmentationDataset, Path, bool]:
    """(memory-mapped dataset, its cache entry, whether it was built now). Builds only when no fresh entry exists;
    nothing is reported here."""
    stamp = fingerprint(source)
    name = entry_name(source, size)
    locations = cache_locations(source)
    for location in locations:
        dataset = _read_entry(location / name, source, size, stamp)
        if dataset is not None:
            return dataset, location / name, False
    location = next((loc for loc in locations if _writable(loc)), None)
    if location is None:
        raise DataError(
            f"no writable cache folder: tried {', '.join(str(loc) for loc in locations)}; "
            "set FEWSHOTSEG_CACHE_DIR to a writable folder"
        )
    # One builder per entry: two processes that start on a cold cache (two trainings side by side) would otherwise
    # each delete the other's arrays as leftovers. The second waits, then reads what the first wrote.
    (location / name).mkdir(parents=True, exist_ok=True)
    with FileLock(str(location / name / BUILD_LOCK)):
        fresh = _read_entry(location / name, source, size, stamp)
        if fresh is not None:
            return fresh, location / name, False
        dataset = decode_source(source, size, strict=strict, progress=progress)
        _write_entry(location / name, source, stamp, dataset)
        fresh = _read_entry(location / name, source, size, stamp)
    assert fresh is not None, f"cache entry {location / name} unreadable right after writing it"
    return fresh, location / name, True


def _finish(
    dataset: SegmentationDataset, source: DataSource, strict: bool, fold: int | None
) -> SegmentationDataset:
    """What every load does after decoding or reading the cache: report, strictness, FP-k sizes, fold."""
    if strict and dataset.problems:
        raise strict_error(dataset.problems[0])
    report_problems(dataset.problems)
    if source.kind == "fp-k":
        fp_k.check_task_sizes(dataset, source.min_pairs)
    if fold is not None:
        if source.kind != "pascal5i-aug":
            raise DataError(f"{source.root}: fold={fold} here applies to pascal5i-aug only (use load_split)")
        dataset = dataset.subset(pascal5i.fold_classes(fold))
    return dataset


def load_dataset(
    spec: str | Path | DataSource,
    size: int,
    *,
    strict: bool = False,
    cache: bool = True,
    fold: int | None = None,
    progress: bool = True,
) -> SegmentationDataset:
    """The dataset named by a `--data` spec at `size` x `size` px, through the decode-once cache.

    Problems (stored in the cache when it was built) are logged once per call. `strict` raises a `DataError` at
    the first problem. `fold` (PASCAL-5i only) keeps that fold's 5 classes. `cache=False` decodes the files
    every time and writes nothing.
    """
    source = parse_spec(spec)
    if cache:
        dataset, _, _ = cached(source, size, strict=strict, progress=progress)
    else:
        dataset = decode_source(source, size, strict=strict, progress=progress)
    return _finish(dataset, source, strict, fold)


def load_split(
    spec: str | Path | DataSource,
    size: int,
    split: str,
    *,
    splits: str = "auto",
    fold: int | None = None,
    strict: bool = False,
    progress: bool = True,
) -> SegmentationDataset:
    """The tasks of one split ("train", "val" or "test") of the dataset a `--data` spec names.

    Without a fold, the classes of a split scheme (`--splits`, see `splits.py`). With `--fold i` (PASCAL-5i,
    COCO-20i): "test" is the fold's classes on the evaluation images (VOC 2012 val / val2014), kept at their
    original size for scoring; "train" the other classes on the training images (trainaug / train2014); "val" the
    other classes on the evaluation images (never the fold's classes). `pascal5i-aug` splits classes only.
    """
    from fewshotseg.data.splits import resolve_splits

    if split not in ("train", "val", "test"):
        raise DataError(f"split must be train, val or test, not {split!r}")
    source = parse_spec(spec)
    if fold is None:
        if source.kind in ("pascal5i", "coco20i"):
            raise DataError(f"--data {spec}: {source.kind} comes in folds; pass --fold 0, 1, 2 or 3")
        dataset = load_dataset(source, size, strict=strict, progress=progress)
        names = resolve_splits(dataset.root, splits, classes=dataset.names)[split]
        if not names:
            word = {"train": "training", "val": "validation", "test": "test"}[split]
            raise DataError(f"--data {spec} --splits {splits}: the split names no {word} class (its {split!r} list is "
                            f"empty or missing); list classes under {split!r} in the split file, or choose another "
                            "--split")
        return dataset.subset(names)
    if source.kind not in FOLD_KINDS:
        raise DataError(f"--fold {fold}: folds exist for {', '.join(FOLD_KINDS)} only; --data {spec} is "
                        f"{source.kind} (use --splits to choose its classes, and --fold -1)")
    if fold not in range(4):
        raise DataError(f"--fold must be 0, 1, 2 or 3 (or -1 for datasets without folds), not {fold}")
    held_out = split == "test"
    if source.kind == "pascal5i-aug":
        dataset = load_dataset(source, size, strict=strict, progress=progress)
        names = pascal5i.fold_classes(fold) if held_out else pascal5i.training_classes(fold)
        return dataset.subset([n for n in names if n in dataset.offsets])
    part = "train" if split == "train" else "val"
    return load_dataset(replace(source, part=part, fold=fold, held_out=held_out, originals=part == "val"),
                        size, strict=strict, progress=progress)


def prepare(spec: str | Path | DataSource, size: int, strict: bool = False) -> SegmentationDataset:
    """Build the cache of a dataset now (with a progress bar) and print a one-line summary."""
    source = parse_spec(spec)
    start = time.perf_counter()
    dataset, entry, built = cached(source, size, strict=strict, progress=True)
    dataset = _finish(dataset, source, strict, fold=None)
    megabytes = (dataset.images.nbytes + dataset.masks.nbytes) / 2**20
    state = f"built in {time.perf_counter() - start:.1f} s" if built else "already up to date"
    print(
        f"{source.kind} {source.root}: {len(dataset)} classes, {len(dataset.files)} pairs at {size} px, "
        f"{len(dataset.problems)} problem(s); cache {state}: {entry} ({megabytes:.0f} MB)"
    )
    return dataset
