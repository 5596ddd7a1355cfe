"""`fewshotseg predict`: images per second, seconds to the first mask and peak memory, by number of workers.

The shipped `general` initialization is fitted (its card's method and update parameters) to 3 labelled fixture
photos and saved; N images are generated from the fixture photos (seeded random crops, flips and scales, saved as
640x480 JPEGs in 10 sub-folders). Then, for each worker count, a real `fewshotseg predict` process labels the tree
into a fresh folder:

    steady      images per second between the first and the last mask file written (their mtimes)
    images/s    predict.json's rate: images over the seconds from starting to predict (workers starting and
                loading the segmenter included) to the last batch written
    end to end  images over the command's wall time (importing torch included)
    first mask  seconds from starting the command to the first mask file on disk
    peak RSS    the predict process's and its largest worker's peak resident set (VmHWM; predict.json)
    peak PSS    the peak of the process tree's proportional set size (shared pages split, not counted twice),
                sampled every 0.1 s from /proc
    re-run      seconds of the same command again over the finished folder (everything skipped)

    python bench/predict_throughput.py [--images 300] [--workers 1 2] [--format png] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "fixtures" / "real-photos"


def fitted_segmenter(folder: Path, settings: dict | None = None) -> Path:
    from fewshotseg.segmenter import FewShotSegmenter

    duck = PHOTOS / "duck_toy"
    seg = FewShotSegmenter.from_pretrained("general", device="cpu")
    spec = seg.method_for("card", settings=settings or None)[0]  # the card's method, these settings changed
    seg.fit([duck / f"{n}.jpg" for n in (1, 2, 3)], [duck / f"{n}.png" for n in (1, 2, 3)], seed=0, method=spec)
    return seg.save_pretrained(folder)


def generate(root: Path, count: int, seed: int = 0) -> None:
    """`count` 640x480 JPEGs from the fixture photos: a random crop (60-100 % of the side), maybe mirrored."""
    import numpy as np
    from PIL import Image, ImageOps

    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*/*.jpg"))]
    for i in range(count):
        im = photos[rng.integers(len(photos))]
        side = int(min(im.size) * rng.uniform(0.6, 1.0))
        x, y = (int(rng.integers(0, s - side + 1)) for s in im.size)
        crop = im.crop((x, y, x + side, y + side)).resize((640, 480), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        folder = root / f"part{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        crop.save(folder / f"img{i:05d}.jpg", quality=90)


def tree_pss_mb(pid: int) -> float:
    """Proportional set size of a process and all its descendants, from /proc (0 once it has exited): pages shared
    between them (torch's libraries, mapped by every worker) are split among them, not counted once per process."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total / 1024


def run(command: list[str], out: Path, env: dict[str, str]) -> dict[str, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first, peak = None, 0.0
    while proc.poll() is None:
        if first is None and any((out / "masks").rglob("*_mask.png")):
            first = time.perf_counter() - started
        peak = max(peak, tree_pss_mb(proc.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - started
    output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{output}")
    return {"wall": wall, "first": first if first is not None else float("nan"), "sampled_peak": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300, help="how many images to generate and label")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--format", default="png", help="predict's --format")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--settings", nargs="+", default=[""], metavar="K:V;K:V",
                    help="overrides of the card method's settings, one fitted segmenter (and one group of rows) per "
                         "value, side by side in this run; '' is the card's own (e.g. '' 'self_train:0')")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="predict-bench-"))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    try:
        t = time.perf_counter()
        from real_photos import inline_settings  # bench/ is this script's own folder, first on sys.path

        models = {text: fitted_segmenter(tmp / f"adapted-{i}", inline_settings(text))
                  for i, text in enumerate(args.settings)}
        model = models[args.settings[0]]
        generate(tmp / "images", args.images)
        card = json.loads((model / "card.json").read_text())
        adaptation = card.get("adaptation") or {}
        policy = (adaptation.get("fitted") or {}).get("update_params", {}).get("bn_policy")
        method = adaptation.get("method", "?") + (f", BatchNorm {policy}" if policy else "")
        print(f"{args.images} images of 640x480 generated, general ({card['model']['encoder']}) fitted at "
              f"{card['size']} px ({method}) in {time.perf_counter() - t:.0f} s; --format {args.format}, "
              f"--batch-size {args.batch_size}, {os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}")
        print("| settings | workers | steady img/s | images/s | end to end img/s | wall s | first mask s "
              "| peak RSS process / worker MB | peak PSS MB | re-run s |")
        print("|---|--------:|-------------:|---------:|-----------------:|-------:|-------------:"
              "|-----------------------------:|------------:|---------:|")
        for (text, model), workers in ((m, w) for m in models.items() for w in args.workers):
            out = tmp / f"out-{len(list(tmp.glob('out-*')))}"
            command = [sys.executable, "-m", "fewshotseg", "predict", "--model", str(model), "--images",
                       str(tmp / "images"), "--out", str(out), "--format", args.format, "--workers", str(workers),
                       "--batch-size", str(args.batch_size), "--device", "cpu", "--no-progress"]
            measured = run(command, out, env)
            summary = json.loads((out / "predict.json").read_text())
            rerun = run(command, out, env)["wall"]
            rss = summary["peak_rss_mb"]
            worker = f"{rss['largest_worker']:.0f}" if rss["largest_worker"] else "-"
            times = sorted(p.stat().st_mtime for p in (out / "masks").rglob("*_mask.png"))
            steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0
            print(f"| {text or 'card'} | {workers} | {steady:.1f} | {summary['images_per_second']:.1f} "
                  f"| {args.images / measured['wall']:.1f} | {measured['wall']:.1f} | {measured['first']:.1f} "
                  f"| {rss['this_process']:.0f} / {worker} | {measured['sampled_peak']:.0f} | {rerun:.1f} |")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
