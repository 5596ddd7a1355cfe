"""The FP-k experiment (paper §5.2, §5.5, App. D, E): mean IoU as a function of the number of training images k.

For each initialization, task and repeat: one shuffle of the task's images; the last 20 are the test set and the
first k train, for every k (nested prefixes, one shared test set per repeat). Adaptation:

* k < 10: U with the update parameters tuned by UHO for the initialization (or the defaults);
* k >= 10: early stopping on 20 % of the k images (patience 50 or 100, fixed or step-decay learning rate, at most
  `max_steps` steps), then retraining on all k images for the steps found (App. E).

Runs on FP-k (FSS-1000 + PASCAL synonyms, >= 420 pairs per task) or on any dataset with enough pairs per class,
e.g. the built-in benchmark generated with `--pairs 440`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fewshotseg.config import COUNT, option
from fewshotseg.data.tasks import TaskTensors, episode_rng, fp_k_prefixes
from fewshotseg.evaluation import jobs
from fewshotseg.evaluation.early_stopping import EarlyStopping, early_stopping, score
from fewshotseg.evaluation.intervals import interval_by_class
from fewshotseg.initializations.adapting import resolve_update_params
from fewshotseg.meta_learning.update_routine import LR_SCHEDULES, UpdateParams
from fewshotseg.models.efficientlab import ModelFields
from fewshotseg.runs.run_dir import FP_K_ROWS, FP_K_SUMMARY, RunDir, claimed
from fewshotseg.runs.workers import Pool, WorkerState

PAPER_KS = [1, 5, 10, 50, 100, 200, 400]


@dataclass
class FPKConfig(ModelFields):
    data: str = option("", "fp-k:FSS_DIR,VOC_DIR, or any dataset with >= max(k) + 20 pairs per class", required=True)
    run_dir: str = option("", "output folder: fp_k.jsonl and fp_k_summary.json", required=True)
    inits: list[str] = field(default_factory=list, metadata={"help": "initializations, LABEL=SPEC or SPEC"})
    update_params: list[str] = field(default_factory=list,
                                     metadata={"help": "LABEL=FILE: UHO parameters used for k < 10"})
    ks: list[int] = field(default_factory=lambda: list(PAPER_KS), metadata={"help": "training-set sizes"})
    repeats: int = option(4, "random repeats per task (paper: 4)")
    test_images: int = option(20, "test images per repeat (paper: 20)")
    tasks: str = option("", "comma-separated classes (default: every class with enough pairs, at most --max-tasks)")
    max_tasks: int = option(5, "at most this many tasks when --tasks is not given (FP-k has 5)", **COUNT)
    early_stopping_from: int = option(10, "k from which early stopping replaces the fixed update routine")
    holdout: float = option(0.2, "fraction of the k images early stopping is judged on (paper: 20 %)")
    patience: int = option(50, "early-stopping patience (paper: 50 or 100)")
    max_steps: int = option(500, "early-stopping maximum steps (the reference: 500)")
    lr: float = option(0.005, "fixed learning rate for k >= 10 (paper: the meta-training value)")
    lr_schedule: str = option("fixed", "fixed, or step: lr * 0.5 every `decay_every` steps (Fig. 4, left)",
                              choices=LR_SCHEDULES)
    decay_every: int = option(100, "step-decay interval")
    size: int = option(224, "square image size")
    seed: int = option(0, "seed of the shuffles and of U")
    workers: int = option(1, "processes running (init, task, repeat, k) units in parallel")
    device: str = option("auto", "cpu, cuda or auto")


def labelled(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        label, _, spec = item.partition("=") if "=" in item else (Path(item).name or item, "", item)
        out[label] = spec
    return out


def fp_k_job(state: WorkerState, label: str, init_path: str, data: str, size: int, cls: str, class_index: int,
             repeat: int, k: int, cfg: FPKConfig, params: UpdateParams) -> dict:
    dataset = jobs.dataset(state, data, size)
    task = TaskTensors.from_dataset(dataset, cls)
    prefixes, test = fp_k_prefixes(episode_rng(cfg.seed, 8, class_index, repeat), len(task), cfg.ks, cfg.test_images)
    train = prefixes[k]
    learner, init = jobs.learner(state, init_path), jobs.init(state, init_path)
    rng = lambda stage: episode_rng(cfg.seed, 9, class_index, repeat, k, stage)  # noqa: E731
    if k < cfg.early_stopping_from:
        steps = params.steps
    else:
        fixed = params.replace(lr=cfg.lr, lr_schedule=cfg.lr_schedule, decay_every=cfg.decay_every)
        n_val = max(1, int(cfg.holdout * k))
        found = early_stopping(learner, init, task.take(train[n_val:]), task.take(train[:n_val]), fixed,
                               EarlyStopping(patience=cfg.patience, max_steps=cfg.max_steps), rng(0))
        steps, params = found.best_step, fixed
    learner.adapt(init, task.take(train), params, rng(1), steps=steps)
    iou = float(score(learner, task.take(test)).mean())
    return {"init": label, "class": cls, "repeat": repeat, "k": k, "steps": steps, "lr": params.lr, "iou": iou}


def fp_k(cfg: FPKConfig, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Mean IoU against k for every initialization (see above): init -> k -> mean ± CI95. The run folder is held
    while it is written (`runs.run_dir.claimed`); another run's results there are refused unless `overwrite`."""
    with claimed(cfg.run_dir, "fp-k", cfg, overwrite=overwrite):
        return _fp_k(cfg, progress=progress)


def _fp_k(cfg: FPKConfig, *, progress: bool) -> dict:
    from tqdm import tqdm

    from fewshotseg.data.cache import load_dataset
    from fewshotseg.initializations.weights import write_for_workers
    from fewshotseg.runs.device import choose_device

    if not cfg.inits:
        raise ValueError("give at least one --init (LABEL=SPEC)")
    run = RunDir(cfg.run_dir)
    dataset = load_dataset(cfg.data, cfg.size)
    need = max(cfg.ks) + cfg.test_images
    if cfg.tasks:
        names = [t.strip() for t in cfg.tasks.split(",")]
        short = [n for n in names if dataset.subset([n]).count(n) < need]
        if short:
            raise ValueError(f"FP-k with k up to {max(cfg.ks)} needs {need} pairs per task; too few in {short}")
    else:
        names = [n for n in dataset.names if dataset.count(n) >= need][: cfg.max_tasks]
        if not names:
            raise ValueError(f"{cfg.data}: no class has the {need} pairs FP-k needs (k up to {max(cfg.ks)} + "
                             f"{cfg.test_images} test images); generate the benchmark with --pairs {need}")
    inits = labelled(cfg.inits)
    tuned = labelled(cfg.update_params)
    jobs = []
    for label, spec in inits.items():
        path = run.file(f"init-{label}.safetensors")
        described = write_for_workers(spec, cfg.model_config(), path, seed=cfg.seed)
        params = resolve_update_params(tuned.get(label))
        run.log(f"{label}: {described}; U for k < {cfg.early_stopping_from}: lr {params.lr:g}, {params.steps} steps")
        for ci, cls in enumerate(names):
            for repeat in range(cfg.repeats):
                for k in cfg.ks:
                    jobs.append((label, str(path), cfg.data, cfg.size, cls, ci, repeat, k, cfg, params))
    rows = []
    bar = tqdm(total=len(jobs), desc="fp-k", unit="run", disable=not progress, dynamic_ncols=True)
    with Pool(cfg.workers, str(choose_device(cfg.device))) as pool:
        for row in pool.map(fp_k_job, jobs):
            rows.append(row)
            bar.update()
    bar.close()
    run.file(FP_K_ROWS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarise(rows)
    run.file(FP_K_SUMMARY).write_text(json.dumps({"tasks": names, "ks": cfg.ks, "repeats": cfg.repeats,
                                                  "summary": summary}, indent=2) + "\n")
    return summary


def summarise(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """init -> k -> mean IoU ± CI95 over (task, repeat) samples (a bootstrap over tasks when a task has several
    repeats), and the median steps."""
    grouped: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in rows:
        grouped[(r["init"], r["k"])].append(r)
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for (label, k), items in sorted(grouped.items()):
        est = interval_by_class([r["iou"] for r in items], [r["class"] for r in items])
        out[label][str(k)] = {**est.as_dict(), "median_steps": float(np.median([r["steps"] for r in items]))}
    return dict(out)
