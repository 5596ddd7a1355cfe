"""Evaluation throughput: task-splits per second of the paper's protocol, and one process vs a worker pool.

A task-split is one episode of the paper's protocol (k = 5 support images, 5 query images): U adapts the
initialization with 5 SGD steps of batch 8 on the support images, predicts the 5 queries and counts their IoU,
all through `evaluation.protocols.run_episode` on `paper_episodes` of a synthetic dataset (FSS-1000 layout,
written at 224 px in a temporary folder and read through the decode-once cache).

* task-splits/s at 64 px with tinynet_e and at 224 px with EfficientLab-3 on tf_efficientnet_b0, one process,
  `--threads` torch threads;
* at 64 px, the same episodes through `evaluate`'s own job (`evaluation.evaluate.episode_job`) run inline in one
  process with all cores' threads (what `evaluate --workers 1` does), inline with one thread, and on
  `fewshotseg.runs.workers.Pool(2)` (two single-threaded worker processes, warmed up first), interleaved round after
  round; printed as ratios of the pool's throughput to each.

    python bench/evaluate_throughput.py [--classes 8] [--splits-224 4] [--repeats 3] [--threads 1] [--device cpu]

`--device cuda` times the single-process throughputs on the GPU (each episode's predictions come back to the CPU
to be scored, so the time holds the kernels); the process/pool comparison is the CPU's and is skipped
(`--no-pool` skips it on the CPU too).
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fewshotseg.data.cache import load_dataset
from fewshotseg.data.synthetic import SyntheticSpec, make_synthetic
from fewshotseg.evaluation import jobs
from fewshotseg.evaluation.evaluate import episode_job
from fewshotseg.evaluation.protocols import paper_episodes, run_episode
from fewshotseg.initializations.weights import save_initialization
from fewshotseg.meta_learning.update_routine import Learner, UpdateParams
from fewshotseg.models.efficientlab import ModelConfig, build_model
from fewshotseg.runs.workers import Pool, WorkerState

SHOTS = 5  # the paper's k = 5; run_episode's queries are the protocol's 5
NATIVE_SIZE = 224
PAIRS = 10  # FSS-1000's images per class: 5 support + 5 query


def warm_worker(state: WorkerState, barrier, init_path: str, data: str, size: int) -> int:
    """Load the initialization, working model and dataset in this worker, then wait until every worker has."""
    jobs.learner(state, init_path)
    jobs.dataset(state, data, size)
    barrier.wait(timeout=300)
    return os.getpid()


def splits_per_second(size: int, encoder: str, root: Path, count: int, threads: int, seed: int,
                      device: str = "cpu") -> tuple[float, float]:
    """(task-splits/s, mean IoU) of `count` paper-protocol episodes in this process, U on `device`."""
    torch.set_num_threads(threads)
    dataset = load_dataset(root, size, progress=False)
    episodes = paper_episodes(dataset, dataset.names, SHOTS, splits=2, seed=seed)[:count]
    torch.manual_seed(seed)
    init = build_model(ModelConfig(encoder=encoder)).to(device)
    learner = Learner(copy.deepcopy(init), device)
    params = UpdateParams()  # the paper's: 5 SGD steps of batch 8, lr 0.005
    run_episode(learner, init, dataset, episodes[0], params, seed=seed)  # warm-up
    start = time.perf_counter()
    ious = [r["iou"] for ep in episodes for r in run_episode(learner, init, dataset, ep, params, seed=seed)]
    return len(episodes) / (time.perf_counter() - start), float(np.mean(ious))


def pool_comparison(root: Path, tmp: Path, args: argparse.Namespace) -> tuple[int, dict[str, list[float]]]:
    """(episodes per pass, seconds per pass for each way): inline with every core's thread, inline with one
    thread, Pool(2); the same 64 px episodes each time."""
    size, cores = 64, os.cpu_count() or 1
    dataset = load_dataset(root, size, progress=False)
    episodes = paper_episodes(dataset, dataset.names, SHOTS, splits=2, seed=args.seed)
    torch.manual_seed(args.seed)
    init_path = tmp / "init.safetensors"
    save_initialization(init_path, build_model(ModelConfig(encoder="tinynet_e")))
    params = UpdateParams()
    jobs = [(str(init_path), str(root), size, ep, params, args.seed, False) for ep in episodes]

    inline = Pool(1)  # runs episode_job in this process, as `evaluate --workers 1`
    workers = 2
    pool = Pool(workers)  # spawned processes with cores // 2 threads each
    try:
        with mp.get_context("spawn").Manager() as manager:
            barrier = manager.Barrier(workers)
            pids = set(pool.map(warm_worker, [(barrier, str(init_path), str(root), size)] * workers))
        if len(pids) != workers:
            raise RuntimeError(f"warm-up reached {len(pids)} of {workers} workers")
        list(pool.map(episode_job, jobs[:workers]))  # first episode per worker, untimed

        def inline_pass(threads: int):
            def run() -> None:
                torch.set_num_threads(threads)
                list(inline.map(episode_job, jobs))
            return run

        passes = {f"1 process, {cores} threads": inline_pass(cores), "1 process, 1 thread": inline_pass(1),
                  "Pool(2), 1 thread each": lambda: list(pool.map(episode_job, jobs))}
        passes[f"1 process, {cores} threads"]()  # warm-up (loads the init and dataset once)
        times: dict[str, list[float]] = {name: [] for name in passes}
        for r in range(args.repeats):
            order = list(passes) if r % 2 == 0 else list(reversed(passes))
            for name in order:
                start = time.perf_counter()
                passes[name]()
                times[name].append(time.perf_counter() - start)
    finally:
        pool.close()
        inline.close()
        torch.set_num_threads(args.threads)
    return len(jobs), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=8, help="classes in the generated dataset (2 splits each)")
    parser.add_argument("--splits-64", type=int, default=16, help="task-splits timed at 64 px")
    parser.add_argument("--splits-224", type=int, default=4, help="task-splits timed at 224 px")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the process/pool comparison")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the single-process throughputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where U adapts in the single-process rows")
    parser.add_argument("--no-pool", action="store_true", help="skip the CPU process/pool comparison")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synthetic"
        make_synthetic(root, SyntheticSpec(classes=args.classes, pairs=PAIRS, size=NATIVE_SIZE, seed=args.seed),
                       progress=False)
        print(f"paper protocol: k={SHOTS} support, 5 queries, U = 5 SGD steps of batch 8; {args.classes} synthetic "
              f"classes x {PAIRS} pairs written at {NATIVE_SIZE} px")
        rows = [("64 px, EfficientLab-3 / tinynet_e", 64, "tinynet_e", args.splits_64),
                ("224 px, EfficientLab-3 / tf_efficientnet_b0", 224, "tf_efficientnet_b0", args.splits_224)]
        for label, size, encoder, count in rows:
            rate, miou = splits_per_second(size, encoder, root, count, args.threads, args.seed, args.device)
            print(f"  {label:<44} {rate:7.3f} task-splits/s  ({1000 / rate:6.0f} ms each, {count} splits, "
                  f"{args.device}, {args.threads} thread(s); query mIoU {miou:.3f}, random init)")
        if args.no_pool or args.device != "cpu":
            return
        count, times = pool_comparison(root, Path(tmp), args)
    print(f"\n64 px tinynet_e, {count} task-splits per pass through evaluate's episode_job; {args.repeats} "
          f"interleaved rounds, medians")
    for name, ts in times.items():
        print(f"  {name:<24} {count / statistics.median(ts):7.2f} task-splits/s")
    pool_name = next(n for n in times if n.startswith("Pool"))
    for name in times:
        if name != pool_name:
            ratios = [a / b for a, b in zip(times[name], times[pool_name], strict=True)]
            print(f"  {pool_name} vs {name}: {statistics.median(ratios):5.2f}x "
                  f"(range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
