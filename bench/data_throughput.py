"""Task batches per second: the decode-once cache (memory map) vs decoding the JPEG/PNG files for every task.

One task = a random class, k=5 support + 5 query pairs, turned into float tensors (B, 3, S, S) and (B, S, S).
Both paths run side by side in one process on the same generated FSS-layout folder, and the ratio is printed.

    python bench/data_throughput.py [--classes 50] [--pairs 10] [--size 224] [--seconds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewshotseg.data.cache import load_dataset
from fewshotseg.data.dataset import SegmentationDataset
from fewshotseg.data.images import read_image, read_mask, resize_image, resize_mask

SHOTS = 5  # support pairs per task; as many queries


def make_folder(root: Path, classes: int, pairs: int, size: int, rng: np.random.Generator) -> None:
    """Photo-like JPEGs (smooth colour fields plus noise, so they compress like photos) and 0/255 PNG masks."""
    yy, xx = np.mgrid[:size, :size] / size
    for c in range(classes):
        folder = root / f"class_{c:03d}"
        folder.mkdir(parents=True)
        for i in range(1, pairs + 1):
            coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            field = np.asarray(
                Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), np.float32
            )
            noisy = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"{i}.jpg", quality=90)
            cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
            mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2).astype(np.uint8) * 255
            Image.fromarray(mask).save(folder / f"{i}.png")


def to_tensors(images: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, S, 3) uint8 + (B, S, S) uint8 -> (B, 3, S, S) float in [0, 1] + (B, S, S) float."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return x, torch.from_numpy(np.ascontiguousarray(masks)).float()


def task_from_cache(dataset: SegmentationDataset, rng: np.random.Generator) -> list[torch.Tensor]:
    name = dataset.names[rng.integers(len(dataset))]
    rows = np.sort(rng.choice(dataset.indices(name), 2 * SHOTS, replace=False))
    support, query = rows[:SHOTS], rows[SHOTS:]
    return [*to_tensors(dataset.images[support], dataset.masks[support]),
            *to_tensors(dataset.images[query], dataset.masks[query])]  # fmt: skip


def task_from_files(dataset: SegmentationDataset, rng: np.random.Generator) -> list[torch.Tensor]:
    name = dataset.names[rng.integers(len(dataset))]
    rows = rng.choice(dataset.indices(name), 2 * SHOTS, replace=False)
    images, masks = [], []
    for row in rows:
        image_path = dataset.root / dataset.files[row]
        images.append(resize_image(read_image(image_path), dataset.size))
        masks.append(resize_mask(read_mask(image_path.with_suffix(".png")), dataset.size))
    images, masks = np.stack(images), np.stack(masks)
    return [*to_tensors(images[:SHOTS], masks[:SHOTS]), *to_tensors(images[SHOTS:], masks[SHOTS:])]


def tasks_per_second(make_task: Callable, dataset: SegmentationDataset, seconds: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    make_task(dataset, rng)  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        make_task(dataset, rng)
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent measuring each path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # measure the data path, not intra-op parallelism

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        make_folder(root, args.classes, args.pairs, args.size, np.random.default_rng(args.seed))
        start = time.perf_counter()
        load_dataset(root, args.size, progress=False)  # builds the cache
        build = time.perf_counter() - start
        dataset = load_dataset(root, args.size, progress=False)  # what every later run sees: a memory map
        assert isinstance(dataset.images, np.memmap)
        cached = tasks_per_second(task_from_cache, dataset, args.seconds, args.seed)
        decoded = tasks_per_second(task_from_files, dataset, args.seconds, args.seed)

    pairs = args.classes * args.pairs
    print(
        f"folder: {args.classes} classes x {args.pairs} pairs of {args.size} px JPEG/PNG; task = {SHOTS}+{SHOTS} pairs"
    )
    print(f"cache build (once): {build:.2f} s for {pairs} pairs ({1000 * build / pairs:.2f} ms/pair)")
    print(f"from cache (memmap): {cached:8.1f} tasks/s")
    print(f"decoding files:      {decoded:8.1f} tasks/s")
    print(f"ratio cache/decode:  {cached / decoded:8.1f}x")


if __name__ == "__main__":
    main()
