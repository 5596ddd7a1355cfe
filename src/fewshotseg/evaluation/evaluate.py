"""`fewshotseg evaluate`: adapt an initialization with U on test tasks and score the query images.

Writes to its run folder:
* `episodes.jsonl`: one row per query image (class, split, shots, query file, fg/bg intersection and union
  counts, IoU). Every number in `results.json` is recomputed from this file by `summarise`.
* `results.json`: per shot count, the paper's mean IoU ± CI95 over task splits, HSNet's class-pooled mIoU and
  FB-IoU with a bootstrap CI over classes, plus what was evaluated and how (initialization, data, image size,
  split, protocol, seed, update parameters, versions).
* `predictions.npz`: a few query images with their masks and predicted probabilities, for report overlays.
"""

from __future__ import annotations

import json
import platform
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fewshotseg.config import ModelFields, option
from fewshotseg.data.tasks import episode_rng
from fewshotseg.evaluation import jobs, metrics
from fewshotseg.evaluation.intervals import bootstrap_over_classes, paper_ci95
from fewshotseg.evaluation.protocols import PROTOCOLS, Episode, make_episodes, run_episode
from fewshotseg.meta_learning.update_routine import UpdateParams
from fewshotseg.runs.run_dir import RunDir, read_jsonl
from fewshotseg.runs.workers import Pool, WorkerState

OVERLAY_EPISODES = 8


@dataclass
class EvaluateConfig(ModelFields):
    init: str = option("", "initialization: a checkpoint or run folder, random or imagenet", required=True)
    data: str = option("", "dataset (FSS-1000 layout, PASCAL VOC folder, fp-k:FSS,VOC)", required=True)
    run_dir: str = option("", "output folder for episodes.jsonl, results.json, predictions.npz", required=True)
    update_params: str = option("", "file of U's hyperparameters (written by `tune`); default: the paper's Table 3")
    shots: list[int] = field(default_factory=lambda: [1, 5], metadata={"help": "support images per task"})
    protocol: str = option("paper", "paper (2 splits x every test task) or hsnet (one episode per query image)")
    splits: str = option("auto", "class split scheme (see meta-train)")
    split: str = option("test", "which classes: test, val or train")
    size: int = option(224, "square image size in pixels (paper: 224)")
    num_splits: int = option(2, "random support/query splits per task for the paper protocol (paper: 2)")
    max_tasks: int = option(0, "evaluate a seeded random subset of this many tasks (0: all)")
    fold: int = option(-1, "PASCAL-5i fold (0-3); -1 for other datasets")
    seed: int = option(0, "seed of the splits and of U's randomness")
    workers: int = option(1, "processes running episodes in parallel (CPU)")
    device: str = option("auto", "cpu, cuda or auto")
    label: str = option("", "the row's name in reports (default: the run folder's name)")


def select_tasks(names: list[str], max_tasks: int, seed: int) -> list[str]:
    """A seeded random subset of `max_tasks` classes (all of them when max_tasks is 0), sorted."""
    if max_tasks and max_tasks < len(names):
        rng = episode_rng(seed, 5)
        names = sorted(rng.choice(names, size=max_tasks, replace=False).tolist())
    return names


def episode_job(state: WorkerState, init_path: str, data: str, size: int, episode: Episode,
                params: UpdateParams, seed: int, keep: bool) -> tuple[list[dict], tuple | None]:
    """One episode in a worker: adapt, predict, count."""
    learner = jobs.learner(state, init_path)
    rows = run_episode(learner, state.init(init_path), jobs.dataset(state, data, size), episode, params, seed=seed,
                       keep_predictions=keep)
    kept = None
    if keep:
        images, masks, probs = learner.last_predictions
        kept = (images[0].numpy(), masks[0].numpy(), probs[0].numpy())
    return rows, kept


def summarise(rows: list[dict]) -> dict:
    """Every reduction of one shot count's rows."""
    paper = paper_ci95(list(metrics.split_scores(rows).values()))
    by_class: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_class[r["class"]].append(r)
    pooled = bootstrap_over_classes(by_class, metrics.hsnet_miou, resamples=1000)
    fb = bootstrap_over_classes(by_class, metrics.fb_iou, resamples=1000)
    return {
        "paper_miou": paper.as_dict(),  # mean over task splits of per-split mean IoU, ± 1.96 sigma / sqrt(n)
        "hsnet_miou": pooled.as_dict(),  # class-pooled, bootstrap CI over classes
        "fb_iou": fb.as_dict(),
        "per_episode_miou": metrics.per_episode_miou(rows),
        "query_images": len(rows),
        "classes": len(by_class),
    }


def versions() -> dict[str, str]:
    import timm

    from fewshotseg import __version__

    return {"fewshotseg": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


def evaluate(cfg: EvaluateConfig, *, params: UpdateParams | None = None, progress: bool = True,
             pool: Pool | None = None, label: str | None = None) -> dict:
    from fewshotseg.data.cache import load_dataset
    from fewshotseg.data.splits import resolve_splits
    from fewshotseg.runs.device import choose_device
    from fewshotseg.runs.initialization import write_for_workers

    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {cfg.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    run = RunDir(cfg.run_dir)
    device = str(choose_device(cfg.device))
    fold = cfg.fold if cfg.fold >= 0 else None
    dataset = load_dataset(cfg.data, cfg.size, fold=fold)
    if fold is None:
        names = resolve_splits(dataset.root, cfg.splits, classes=dataset.names)[cfg.split]
    else:
        names = dataset.names  # a PASCAL-5i fold is its own test set
    names = select_tasks(names, cfg.max_tasks, cfg.seed)
    if params is None:
        params = UpdateParams.load(cfg.update_params) if cfg.update_params else UpdateParams()

    init_path = run.file("init.safetensors")
    described = write_for_workers(cfg.init, cfg.model_config(dropout=params.dropout), init_path, seed=cfg.seed)
    run.log(f"evaluating {described} on {len(names)} {cfg.split} tasks of {cfg.data} ({cfg.protocol} protocol, "
            f"{cfg.size} px, U: lr {params.lr:g}, {params.steps} steps, batch {params.batch_size})")

    episodes_path = run.file("episodes.jsonl")
    episodes_path.unlink(missing_ok=True)
    results = {
        "init": cfg.init, "described": described, "data": cfg.data, "size": cfg.size, "split": cfg.split,
        "splits": cfg.splits, "protocol": cfg.protocol, "seed": cfg.seed, "num_splits": cfg.num_splits,
        "tasks": len(names), "update_params": params.as_dict(), "config": asdict(cfg), "versions": versions(),
        "shots": {},
    }
    kept: list[tuple] = []
    started = time.monotonic()
    own_pool = pool is None
    pool = pool or Pool(cfg.workers, device)
    try:
        for shots in cfg.shots:
            episodes = make_episodes(cfg.protocol, dataset.subset(names), names, shots, cfg.seed, cfg.num_splits)
            jobs = [(str(init_path), cfg.data, cfg.size, ep, params, cfg.seed, i < OVERLAY_EPISODES)
                    for i, ep in enumerate(episodes)]
            rows: list[dict] = []
            bar = tqdm(total=len(jobs), desc=f"evaluate {shots}-shot", unit="episode", disable=not progress,
                       dynamic_ncols=True)
            for episode_rows, example in pool.map(episode_job, jobs):
                rows += episode_rows
                if example is not None:
                    kept.append((shots, *example))
                bar.update()
            bar.close()
            with episodes_path.open("a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
            results["shots"][str(shots)] = summarise(rows)
            run.log(f"{shots}-shot: mean IoU {100 * results['shots'][str(shots)]['paper_miou']['mean']:.2f} "
                    f"± {100 * results['shots'][str(shots)]['paper_miou']['ci95']:.2f} % over "
                    f"{results['shots'][str(shots)]['paper_miou']['n']} task splits")
    finally:
        if own_pool:
            pool.close()
    if label or cfg.label:
        results["label"] = label or cfg.label
    results["seconds"] = time.monotonic() - started
    run.file("results.json").write_text(json.dumps(results, indent=2) + "\n")
    if kept:
        np.savez_compressed(run.file("predictions.npz"), shots=np.array([k[0] for k in kept]),
                            images=np.stack([k[1] for k in kept]), masks=np.stack([k[2] for k in kept]),
                            probs=np.stack([k[3] for k in kept]))
    return results


def recompute(run_dir: str | Path) -> dict[str, dict]:
    """Every reduction again, from episodes.jsonl alone."""
    rows = read_jsonl(Path(run_dir) / "episodes.jsonl")
    by_shots: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_shots[r["shots"]].append(r)
    return {str(k): summarise(v) for k, v in sorted(by_shots.items())}
