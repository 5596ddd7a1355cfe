"""The `analyze-weights` command (paper App. G): adapt each initialization to test tasks with U and record how far
each block moved (analysis/weight_distance.py computes the distances), as `weight_distances.jsonl` and a summary.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from fewshotseg.analysis.weight_distance import distances, group_blocks
from fewshotseg.config import option
from fewshotseg.data.splits import SPLITS
from fewshotseg.data.tasks import TaskTensors, episode_rng
from fewshotseg.evaluation import jobs
from fewshotseg.evaluation.intervals import interval_by_class
from fewshotseg.evaluation.protocols import Episode, paper_episodes
from fewshotseg.initializations.adapting import resolve_update_params
from fewshotseg.meta_learning.update_routine import UpdateParams
from fewshotseg.models.efficientlab import ModelFields
from fewshotseg.runs.run_dir import WEIGHT_ROWS, WEIGHT_SUMMARY, RunDir, claimed
from fewshotseg.runs.workers import Pool, WorkerState


@dataclass
class AnalyzeConfig(ModelFields):
    data: str = option("", "dataset whose test tasks the initializations are adapted to", required=True)
    run_dir: str = option("", "output folder: weight_distances.jsonl, weight_summary.json", required=True)
    inits: list[str] = field(default_factory=list, metadata={"help": "two or more initializations, LABEL=SPEC"})
    shots: int = option(5, "training images per task (paper: 5)")
    num_splits: int = option(2, "random splits per task (paper: 2 x 240 test tasks)")
    max_tasks: int = option(0, "a seeded subset of this many test tasks (0: all)")
    update_params: str = option("", "U's parameters (paper App. G: lr 0.005, 5 steps, the defaults)")
    splits: str = option("auto", "class split scheme")
    split: str = option("test", "which classes", choices=SPLITS)
    size: int = option(224, "square image size")
    seed: int = option(0, "seed")
    workers: int = option(1, "processes in parallel")
    device: str = option("auto", "cpu, cuda or auto")


def distance_job(state: WorkerState, label: str, init_path: str, data: str, size: int, episode: Episode,
                 params: UpdateParams, seed: int) -> list[dict]:
    init, learner = jobs.init(state, init_path), jobs.learner(state, init_path)
    task = TaskTensors.from_dataset(jobs.dataset(state, data, size), episode.cls).take(list(episode.support))
    learner.adapt(init, task, params, episode_rng(seed, 3, episode.class_index, episode.split, len(episode.support)))
    before = dict(init.named_parameters())
    after = dict(learner.model.named_parameters())
    found = distances(before, after, group_blocks(list(before)))
    return [{"init": label, "class": episode.cls, "split": episode.split, "block": block, **values}
            for block, values in found.items()]


def analyze_weights(cfg: AnalyzeConfig, *, overwrite: bool = False, progress: bool = True) -> dict:
    """How far U moves each initialization, per block: init -> block -> metric -> mean ± CI95. The run folder is
    held while it is written (`runs.run_dir.claimed`); another run's results there are refused unless `overwrite`."""
    with claimed(cfg.run_dir, "analyze-weights", cfg, overwrite=overwrite):
        return _analyze_weights(cfg, progress=progress)


def _analyze_weights(cfg: AnalyzeConfig, *, progress: bool) -> dict:
    from tqdm import tqdm

    from fewshotseg.data.cache import load_dataset
    from fewshotseg.data.splits import resolve_splits
    from fewshotseg.evaluation.evaluate import select_tasks
    from fewshotseg.evaluation.fp_k import labelled
    from fewshotseg.initializations.weights import write_for_workers
    from fewshotseg.runs.device import choose_device

    inits = labelled(cfg.inits)
    if len(inits) < 1:
        raise ValueError("give --init LABEL=SPEC (two or more to compare)")
    run = RunDir(cfg.run_dir)
    dataset = load_dataset(cfg.data, cfg.size)
    names = resolve_splits(dataset.root, cfg.splits, classes=dataset.names)[cfg.split]
    names = select_tasks(names, cfg.max_tasks, cfg.seed)
    episodes = paper_episodes(dataset.subset(names), names, cfg.shots, splits=cfg.num_splits, seed=cfg.seed)
    params = resolve_update_params(cfg.update_params or None)
    jobs, described = [], {}
    for label, spec in inits.items():
        path = run.file(f"init-{label}.safetensors")
        described[label] = write_for_workers(spec, cfg.model_config(), path, seed=cfg.seed)
        jobs += [(label, str(path), cfg.data, cfg.size, ep, params, cfg.seed) for ep in episodes]
    rows: list[dict] = []
    bar = tqdm(total=len(jobs), desc="analyze-weights", unit="task", disable=not progress, dynamic_ncols=True)
    with Pool(cfg.workers, str(choose_device(cfg.device))) as pool:
        for found in pool.map(distance_job, jobs):
            rows += found
            bar.update()
    bar.close()
    run.file(WEIGHT_ROWS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarise(rows)
    run.file(WEIGHT_SUMMARY).write_text(json.dumps({"update_params": params.as_dict(), "tasks": len(names),
                                                    "inits": described, "summary": summary}, indent=2) + "\n")
    return summary


def summarise(rows: list[dict]) -> dict:
    """init -> block -> metric -> mean ± CI95 over task splits (a bootstrap over classes when a class has several
    splits; blocks in network order)."""
    grouped: dict[tuple[str, str, str], list[tuple[str, float]]] = defaultdict(list)
    order: dict[str, int] = {}
    for r in rows:
        order.setdefault(r["block"], len(order))
        for metric in ("d1", "d2", "d3"):
            if metric in r:
                grouped[(r["init"], r["block"], metric)].append((r["class"], r[metric]))
    out: dict = defaultdict(lambda: defaultdict(dict))
    for (label, block, metric), values in sorted(grouped.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        out[label][block][metric] = interval_by_class([v for _, v in values], [c for c, _ in values]).as_dict()
    return json.loads(json.dumps(out))
