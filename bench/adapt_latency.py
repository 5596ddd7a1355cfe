"""How long `fewshotseg adapt` takes with 5 support pairs and 20 queries, and where the time goes.

    python bench/adapt_latency.py [--init general] [--runs 3] [--threads 0] [--baseline]

Support: the first 5 real-photo fixture pairs; queries: 20 fixture photos (320 x 320). Prints the command's wall time
end to end (a new Python process each run: importing torch and timm, loading the initialization, fitting, predicting,
writing 20 masks and overlays), alternating with the same command run through `main(argv)` from Python, which
leaves Python's garbage collector alone (the program pauses it over its start-up imports and freezes what they
made: the ratio of the two is that choice's effect), and with `--baseline` the plain frozen-feature probe (the
ImageNet lite0 encoder at 224 px, skip + deep features, l2 1e-2: no mirroring, self-training or refinement) as a
command too, then the same phases timed in one process: importing fewshotseg's segmenter (torch,
timm, torchvision), loading the initialization, `fit`, `predict` on the 20 queries. `--threads 0` leaves torch's
default (one per core); the command is run with the same setting.
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
FIXTURES = REPO / "tests" / "fixtures" / "real-photos"

IN_PROCESS = """
import sys, time
t0 = time.perf_counter()
import torch
from fewshotseg.segmenter import FewShotSegmenter
if {threads}:
    torch.set_num_threads({threads})
t1 = time.perf_counter()
seg = FewShotSegmenter.from_pretrained({init!r}, device="cpu")
t2 = time.perf_counter()
seg.fit({images!r}, {masks!r})
t3 = time.perf_counter()
seg.predict({queries!r})
t4 = time.perf_counter()
print(f"{{t1 - t0:.2f}} {{t2 - t1:.2f}} {{t3 - t2:.2f}} {{t4 - t3:.2f}} {{torch.get_num_threads()}}")
"""

PLAIN_PROBE = {"features": ["skip", "deep"], "l2": 0.01}  # the baseline: no flip, self-training or refinement
GC_UNMANAGED = "import sys; from fewshotseg.cli import main; raise SystemExit(main(sys.argv[1:]))"


def folders(tmp: Path) -> tuple[Path, Path]:
    support, query = tmp / "support", tmp / "query"
    support.mkdir(), query.mkdir()
    pairs = [(f, f.with_suffix(".png")) for f in sorted(FIXTURES.glob("*/*.jpg"))]
    for n, (image, mask) in enumerate(pairs[:5]):
        shutil.copy(image, support / f"{n}.jpg")
        shutil.copy(mask, support / f"{n}.png")
    for n in range(20):
        shutil.copy(pairs[n % len(pairs)][0], query / f"q{n}.jpg")
    return support, query


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default="general")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--baseline", action="store_true",
                        help="also time the command with the plain lite0 probe, alternating with the others")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    else:
        env.pop("OMP_NUM_THREADS", None)
    load = os.getloadavg()[0]
    print(f"load average before: {load:.2f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        support, query = folders(Path(tmp))
        settings = Path(tmp) / "plain-probe.json"
        settings.write_text(json.dumps(PLAIN_PROBE))
        program = [sys.executable, "-m", "fewshotseg"]
        common = ["adapt", "--support", str(support), "--query", str(query), "--device", "cpu"]
        variants = {"command": program + common + ["--init", args.init],
                    "collector left alone": [sys.executable, "-c", GC_UNMANAGED] + common + ["--init", args.init]}
        if args.baseline:
            variants["plain lite0 probe"] = program + common + [
                "--init", "imagenet", "--encoder", "tf_efficientnet_lite0", "--size", "224", "--method", "probe",
                "--method-settings", str(settings)]
        times: dict[str, list[float]] = {name: [] for name in variants}
        for run in range(args.runs):
            for name, cmd in variants.items():
                out = Path(tmp) / f"out{run}-{len(times[name])}-{name.replace(' ', '-')}"
                started = time.perf_counter()
                subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True, env=env)
                times[name].append(time.perf_counter() - started)
            print(f"  adapt 5 + 20, run {run + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()),
                  flush=True)
        command, plain_gc = times["command"], times["collector left alone"]
        images = sorted(str(p) for p in support.glob("*.jpg"))
        script = IN_PROCESS.format(threads=args.threads, init=args.init, images=images,
                                   masks=[p.replace(".jpg", ".png") for p in images],
                                   queries=sorted(str(p) for p in query.glob("*.jpg")))
        phases = []
        for _ in range(args.runs):
            done = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=env)
            phases.append([float(x) for x in done.stdout.split()])
    print(f"\nadapt 5 + 20 (command, end to end): {min(command):.2f} s best, {sorted(command)[len(command) // 2]:.2f} s"
          f" median of {len(command)}")
    print(f"the same through main(argv), collector left alone: {min(plain_gc):.2f} s best, "
          f"{sorted(plain_gc)[len(plain_gc) // 2]:.2f} s median (ratio of medians "
          f"{sorted(plain_gc)[len(plain_gc) // 2] / sorted(command)[len(command) // 2]:.2f})")
    if args.baseline:
        plain = times["plain lite0 probe"]
        print(f"the plain lite0 probe as a command: {min(plain):.2f} s best, {sorted(plain)[len(plain) // 2]:.2f} s "
              "median")
    names = ("import", "load", "fit", "predict 20")
    best = [min(p[i] for p in phases) for i in range(4)]
    print("in one process, best of runs: " + ", ".join(f"{n} {b:.2f} s" for n, b in zip(names, best, strict=True))
          + f" ({int(phases[0][4])} torch threads)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
