"""`--max-minutes` on real runs: how close `meta-train` and `joint-train` end to their time budget.

Each run is the `fewshotseg` command in a fresh process, timed from the moment it is started to the moment it
exits, so everything a user waits for counts: starting Python, importing torch and timm, loading the data,
building the model, the iterations, every validation and checkpoint, and the export. The runs validate and
checkpoint often (meta-train: a validation on 20 tasks every 50 iterations and a checkpoint every 25, the
cpu-quick preset otherwise; joint-train: a checkpoint every 100 steps) so that the cost of that work is visible.

Printed per run: the budget, the measured wall time, the overrun ((wall - budget) / budget) and whether it is
within 5 %, the iteration count the budget was fitted to and the run's own last "time budget" log line.
Nothing is asserted: timing depends on the machine, and on a shared one on what else runs.

    python bench/max_minutes.py [--minutes 1 4] [--commands meta-train joint-train] [--encoder tinynet_e]
                                [--size 64] [--classes 120] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from fewshotseg.data.synthetic import SyntheticSpec, make_synthetic

TOLERANCE = 0.05


def command_line(verb: str, data: Path, run_dir: Path, minutes: float, args: argparse.Namespace) -> list[str]:
    common = ["--data", str(data), "--run-dir", str(run_dir), "--size", str(args.size), "--encoder", args.encoder,
              "--threads", "1", "--device", "cpu", "--max-minutes", f"{minutes:g}"]
    if verb == "meta-train":
        return [sys.executable, "-m", "fewshotseg", "meta-train", "--preset", "cpu-quick", *common,
                "--iterations", "100000", "--eval-interval", "50", "--eval-tasks", "20",
                "--checkpoint-interval", "25"]
    return [sys.executable, "-m", "fewshotseg", "joint-train", *common, "--epochs", "1000", "--optimizer", "adam",
            "--lr", "2e-3", "--lr-final", "1e-5", "--checkpoint-interval", "100"]


def last_budget_line(run_dir: Path) -> str:
    log = run_dir / "log.txt"
    lines = [line for line in log.read_text().splitlines() if "time budget" in line] if log.exists() else []
    return lines[-1].split(" ", 2)[-1] if lines else "(no refit logged)"  # without the date and time


def fitted_count(run_dir: Path) -> str:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    for key in ("iterations", "epochs"):
        if key in config:
            return f"{key} {config[key]:g}"
    return "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--commands", nargs="+", default=["meta-train", "joint-train"],
                        choices=["meta-train", "joint-train"])
    parser.add_argument("--encoder", default="tinynet_e")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=120)
    parser.add_argument("--keep", help="write the data and runs here instead of a temporary folder")
    args = parser.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fewshotseg-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    if not data.exists():
        make_synthetic(data, SyntheticSpec(classes=args.classes, pairs=10, size=args.size, seed=0))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    rows = []
    try:
        for minutes in args.minutes:
            for verb in args.commands:
                run_dir = root / f"{verb}-{minutes:g}min"
                shutil.rmtree(run_dir, ignore_errors=True)
                command = command_line(verb, data, run_dir, minutes, args)
                print(f"{verb}, budget {minutes:g} min ...", flush=True)
                started = time.monotonic()
                done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                wall = time.monotonic() - started
                if done.returncode:
                    print(done.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"{verb} failed with exit status {done.returncode}")
                budget = minutes * 60
                over = (wall - budget) / budget
                rows.append((verb, budget, wall, over, fitted_count(run_dir), last_budget_line(run_dir)))
                print(f"  {wall:.1f} s for {budget:.0f} s: {over:+.1%}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\n{args.encoder} at {args.size} px, one torch thread per run\n")
    print("| command | budget | wall | overrun | within 5 % | fitted to | last refit in the run's log |")
    print("|---|---:|---:|---:|:---:|---|---|")
    for verb, budget, wall, over, fitted, line in rows:
        verdict = "yes" if abs(over) <= TOLERANCE else "no"
        print(f"| {verb} | {budget:.0f} s | {wall:.1f} s | {over:+.1%} | {verdict} | {fitted} | {line} |")


if __name__ == "__main__":
    main()
