"""`fewshotseg evaluate`: adapt an initialization on test tasks and score the query images.

Every episode adapts with one method (`adaptation.methods`): the initialization's own (its card's `adaptation`
entry; fine-tuning with U when it has none) or `--method`'s. The log names it with its settings and where they came
from; for fine-tuning, U's values and their source per shot count.

Writes to its run folder:
* `episodes.jsonl`: one row per query image (class, split, shots, query file, fg/bg intersection and union
  counts, IoU). Every number in `results.json` is recomputed from this file by `summarise`.
* `results.json`: per shot count, the paper's mean IoU ± CI95 over task splits, HSNet's class-pooled mIoU and
  FB-IoU with a bootstrap CI over classes, the same reductions for the two floors (all foreground; the support
  masks' foreground rate) on the same episodes, for the hsnet protocol the per-seed values and their mean over
  the seeds, plus what was evaluated and how (initialization, data, image size, split, protocol, seed, the adaptation
  method with its settings and their source under `method`, U's update parameters — used only when the method is
  finetune — and versions).
* `predictions.npz`: a few query images with their masks and predicted probabilities, for report overlays.
"""

from __future__ import annotations

import json
import platform
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm import tqdm

from fewshotseg.adaptation import METHODS, MethodSpec
from fewshotseg.config import SIZE, option
from fewshotseg.data.splits import SPLITS
from fewshotseg.data.tasks import TaskTensors, episode_rng
from fewshotseg.errors import DivergedError
from fewshotseg.evaluation import jobs, metrics
from fewshotseg.evaluation.intervals import bootstrap_over_classes, interval_by_class
from fewshotseg.evaluation.protocols import (
    HSNET_EPISODES,
    HSNET_SEEDS,
    PROTOCOLS,
    Episode,
    make_episodes,
    run_episode,
)
from fewshotseg.initializations.adapting import U_PRESETS
from fewshotseg.meta_learning.update_routine import UpdateParams
from fewshotseg.models.efficientlab import ModelFields
from fewshotseg.runs.run_dir import (
    EPISODES,
    INIT,
    PREDICTIONS,
    RESULTS,
    RunDir,
    atomic_write,
    claimed,
    read_jsonl,
)
from fewshotseg.runs.workers import Pool, WorkerState

OVERLAY_EPISODES = 8


@dataclass
class EvaluateConfig(ModelFields):
    init: str = option("", "initialization: a checkpoint or run folder, random or imagenet", required=True)
    data: str = option("", "dataset (FSS-1000 layout, pascal5i:VOC, coco20i:COCO, fp-k:FSS,VOC)", required=True)
    run_dir: str = option("", "output folder for episodes.jsonl, results.json, predictions.npz", required=True)
    update_params: str = option("", "file of U's hyperparameters (written by `tune`); default: the "
                                    "initialization's own, per shot count (its card)")
    u_preset: str = option("card", "where U's hyperparameters come from when no file is given: card (the "
                                   "initialization's own) or paper (Table 3)", choices=U_PRESETS)
    method: str = option("card", "adaptation method: card (the initialization's own), finetune (U), probe, "
                                 "prototype or rf; every method runs on the same episodes", choices=("card", *METHODS))
    method_settings: str = option("", "the method's settings from a file (`tune --method`'s method.json); "
                                      "default: the card's for that method, else its defaults")
    shots: list[int] = field(default_factory=lambda: [1, 5], metadata={"help": "support images per task"})
    protocol: str = option("auto", "paper (2 splits x every test task), hsnet (1000 seeded episodes x 5 seeds, "
                                    "HSNet's), per-query (one episode per query image); auto: hsnet with --fold, "
                                    "else paper", choices=("auto", *PROTOCOLS))
    episodes: int = option(HSNET_EPISODES, "episodes per seed of the hsnet protocol (HSNet: 1000)")
    seeds: int = option(HSNET_SEEDS, "runs of the hsnet protocol with seeds seed, seed+1, ...; results hold each "
                                     "and their mean")
    splits: str = option("auto", "class split scheme (see meta-train)")
    split: str = option("test", "which classes: test, val or train", choices=SPLITS)
    size: int = option(0, "square image size in pixels (0: the initialization's own, from its card; else 224, "
                          "the paper's)", **SIZE, or_zero=True)
    num_splits: int = option(2, "random support/query splits per task for the paper protocol (paper: 2)")
    max_tasks: int = option(0, "evaluate a seeded random subset of this many tasks (0: all)")
    fold: int = option(-1, "PASCAL-5i / COCO-20i fold (0-3): test = the fold's classes; -1 for other datasets")
    seed: int = option(0, "seed of the splits and of U's randomness")
    workers: int = option(1, "processes running episodes in parallel (CPU)")
    device: str = option("auto", "cpu, cuda or auto")
    label: str = option("", "the row's name in reports (default: the run folder's name)")
    # Episodes of other shot counts may share a run folder (results.json holds the current ones); U's values count,
    # claimed per shot count in place of the file or preset they came from.
    FREE: ClassVar[tuple[str, ...]] = ("shots", "update_params", "u_preset")


def select_tasks(names: list[str], max_tasks: int, seed: int) -> list[str]:
    """A seeded random subset of `max_tasks` classes (all of them when max_tasks is 0), sorted."""
    if max_tasks and max_tasks < len(names):
        rng = episode_rng(seed, 5)
        names = sorted(rng.choice(names, size=max_tasks, replace=False).tolist())
    return names


def episode_job(state: WorkerState, init_path: str, data: str | tuple, size: int, episode: Episode,
                params: UpdateParams, seed: int, keep: bool,
                method: MethodSpec | None = None) -> tuple[list[dict], tuple | None]:
    """One episode in a worker: adapt, predict, count; every row carries the episode's adapt + predict seconds."""
    learner, dataset = jobs.learner(state, init_path), jobs.dataset(state, data, size)
    started = time.perf_counter()
    rows = run_episode(learner, jobs.init(state, init_path), dataset, episode, params, seed=seed, method=method)
    seconds = time.perf_counter() - started
    rows = [{**r, "seconds": seconds} for r in rows]
    kept = None
    if keep and learner.last_predictions is not None:  # the episode's queries, predicted last
        images, probs = learner.last_predictions
        masks = TaskTensors.from_dataset(dataset, episode.cls).take([episode.query[0]]).masks
        kept = (images[0].numpy(), masks[0].numpy(), probs[0].numpy())
    return rows, kept


def summarise(rows: list[dict]) -> dict:
    """Every reduction of one shot count's rows; with rows of several seeds (hsnet), those of the first seed,
    plus each seed's class-pooled mIoU and FB-IoU and their mean over the seeds."""
    seeds = sorted({r.get("seed", 0) for r in rows})
    first = [r for r in rows if r.get("seed", 0) == seeds[0]]
    summary = _reductions(first, bootstrap=True)
    floors = {name: _reductions([{"class": r["class"], "split": r["split"], **r["floors"][name]} for r in first],
                                bootstrap=False)
              for name in ("all_foreground", "support_rate") if all("floors" in r for r in first)}
    if floors:
        summary["floors"] = floors
    if len(seeds) > 1:
        per_seed = {s: _reductions([r for r in rows if r.get("seed", 0) == s], bootstrap=False) for s in seeds}
        summary["seeds"] = {
            "seeds": seeds,
            **{key: {"per_seed": [per_seed[s][key]["mean"] for s in seeds],
                     "mean": float(np.mean([per_seed[s][key]["mean"] for s in seeds])),
                     "std": float(np.std([per_seed[s][key]["mean"] for s in seeds]))}
               for key in ("hsnet_miou", "fb_iou", "paper_miou")},
        }
    return summary


def _reductions(rows: list[dict], *, bootstrap: bool) -> dict:
    scores = metrics.split_scores(rows)  # (class, split) -> score; a class's splits share the class
    paper = interval_by_class(list(scores.values()), [cls for cls, _ in scores])
    by_class: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_class[r["class"]].append(r)
    if bootstrap:
        pooled = bootstrap_over_classes(by_class, metrics.hsnet_miou, resamples=1000).as_dict()
        fb = bootstrap_over_classes(by_class, metrics.fb_iou, resamples=1000).as_dict()
    else:
        pooled, fb = {"mean": metrics.hsnet_miou(rows)}, {"mean": metrics.fb_iou(rows)}
    return {
        # mean over task splits of per-split mean IoU; t interval (one split per class) or class bootstrap
        "paper_miou": paper.as_dict(),
        "hsnet_miou": pooled,  # class-pooled, bootstrap CI over classes
        "fb_iou": fb,
        "per_episode_miou": metrics.per_episode_miou(rows),
        "query_images": len(rows),
        "seconds_per_episode": _seconds_per_episode(rows),
        "classes": len(by_class),
    }


def _seconds_per_episode(rows: list[dict]) -> float | None:
    """Mean adapt + predict seconds of an episode (each of its rows carries it); None for rows without timings."""
    episodes = {(r.get("seed", 0), r["class"], r["split"]): r.get("seconds") for r in rows}
    times = [t for t in episodes.values() if t is not None]
    return float(np.mean(times)) if times and len(times) == len(episodes) else None


def versions() -> dict[str, str]:
    import timm

    from fewshotseg import __version__

    return {"fewshotseg": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


def method_spec(cfg: EvaluateConfig) -> tuple[MethodSpec, str]:
    """The adaptation method evaluated and where its settings came from (see `initializations.adapting.resolve_method`)."""
    from fewshotseg.initializations.adapting import resolve_method
    from fewshotseg.initializations.pretrained import init_card

    return resolve_method(init_card(cfg.init), cfg.method, file=cfg.method_settings or None)


def method_line(spec: MethodSpec, source: str, *, given: bool) -> str:
    """The log's line saying how every episode adapts and where that came from. Fine-tuning's U follows per shot
    count; the frozen-feature methods and rf do not use U, so their line is all there is: the method, its settings
    and where they came from."""
    chosen = f"given (--method {spec.method})" if given else "the initialization's own (its card)"
    if spec.method == "finetune":
        settings = dict(spec.settings)
        refine = (f", probabilities refined (refine_radius {settings['refine_radius']}, refine_eps "
                  f"{settings['refine_eps']:g}; from {source})" if settings.get("refine_radius") else "")
        return f"adaptation: finetune (U{refine}) — method {chosen}; U per shot count below"
    return f"adaptation: {spec.describe()} — method {chosen}; settings from {source}; U is not used"


def shot_params(cfg: EvaluateConfig, u_overrides: dict | None = None) -> dict[int, tuple[UpdateParams, str]]:
    """shots -> (U's hyperparameters, where they came from) for every shot count of the evaluation."""
    from fewshotseg.initializations.adapting import init_update_params

    return {k: init_update_params(cfg.init, k, preset=cfg.u_preset, file=cfg.update_params or None,
                                  **(u_overrides or {})) for k in cfg.shots}


def evaluate(cfg: EvaluateConfig, *, params: UpdateParams | None = None, u_overrides: dict | None = None,
             overwrite: bool = False, progress: bool = True, pool: Pool | None = None,
             label: str | None = None) -> dict:
    """Evaluate `cfg.init`; U is `params` for every shot count when given, else the initialization's own per shot
    count (its card), a file, or the paper's (see `shot_params`). The run folder is held while it is written
    (`runs.run_dir.claimed`): the same settings append to its episodes, another run's results are refused unless
    `overwrite`."""
    from fewshotseg.initializations.pretrained import adopt_init_architecture

    cfg = adopt_init_architecture(cfg)
    per_shot = ({k: (params, "given") for k in cfg.shots} if params is not None
                else shot_params(cfg, u_overrides))
    with claimed(cfg.run_dir, "evaluate", cfg, free=cfg.FREE, overwrite=overwrite,
                 extra={"u": {str(k): p.as_dict() for k, (p, _) in per_shot.items()}}):
        return _evaluate(cfg, per_shot, progress=progress, pool=pool, label=label)


def _evaluate(cfg: EvaluateConfig, per_shot: dict[int, tuple[UpdateParams, str]], *, progress: bool,
              pool: Pool | None, label: str | None) -> dict:
    from fewshotseg.data.cache import load_split
    from fewshotseg.data.sources import parse_spec
    from fewshotseg.initializations.weights import write_for_workers
    from fewshotseg.runs.device import choose_device

    fold = cfg.fold if cfg.fold >= 0 else None
    protocol = ("hsnet" if fold is not None else "paper") if cfg.protocol == "auto" else cfg.protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol {cfg.protocol!r}: choose auto or one of {', '.join(PROTOCOLS)}")
    if not cfg.size:
        from fewshotseg.initializations.pretrained import card_size

        cfg = replace(cfg, size=card_size(cfg.init) or 224)
    spec, spec_source = method_spec(cfg)
    params = per_shot[cfg.shots[0]][0]
    run = RunDir(cfg.run_dir)
    device = str(choose_device(cfg.device))
    data_key = (cfg.data, cfg.split, cfg.splits, fold)  # what each worker loads
    dataset = load_split(cfg.data, cfg.size, cfg.split, splits=cfg.splits, fold=fold)
    names = select_tasks(dataset.names, cfg.max_tasks, cfg.seed)
    from fewshotseg.evaluation.protocols import check_shots

    check_shots(dataset, names, cfg.shots, protocol, f"{cfg.data} ({cfg.split} classes)")  # every shot count, up front
    class_uniform = parse_spec(cfg.data).kind == "coco20i"  # HSNet's COCO loader draws a class, then a query
    seeds = cfg.seeds if protocol == "hsnet" else 1

    init_path = run.file(INIT)
    described = write_for_workers(cfg.init, cfg.model_config(dropout=params.dropout), init_path, seed=cfg.seed)
    finetune, given = spec.method == "finetune", cfg.method not in ("", "card")
    run.log(f"evaluating {described} on {len(names)} {cfg.split} tasks of {cfg.data} ({protocol} protocol, "
            f"{cfg.size} px)")
    run.log(method_line(spec, spec_source, given=given))

    episodes_path = run.file(EPISODES)
    done = previous_rows(episodes_path)  # an interrupted evaluation resumes: finished episodes are not rerun
    results = {
        "init": cfg.init, "described": described, "data": cfg.data, "size": cfg.size, "split": cfg.split,
        "splits": cfg.splits, "protocol": protocol, "seed": cfg.seed, "num_splits": cfg.num_splits, "fold": fold,
        "episodes_per_seed": cfg.episodes if protocol == "hsnet" else None, "seeds": seeds,
        "original_size": dataset.originals is not None,
        "tasks": len(names), "update_params": params.as_dict(), "config": asdict(cfg), "versions": versions(),
        # how every episode adapted; given: chosen by --method (else the card's); U (update_params) only for finetune
        "method": {**spec.as_dict(), "source": spec_source, "given": given},
        "shots": {}, "update_params_per_shot": {},
    }
    kept: list[tuple] = []
    started = time.monotonic()
    own_pool = pool is None
    pool = pool or Pool(cfg.workers, device)
    try:
        for shots in cfg.shots:
            params, source = per_shot[shots]
            if finetune:  # the other methods do not use U: their settings are logged once, above
                run.log(f"{shots}-shot U: lr {params.lr:g}, {params.steps} steps, batch {params.batch_size}, "
                        f"BatchNorm {params.bn_policy} — from {source}")
            jobs, keys = [], []
            for s in range(seeds):  # the hsnet protocol's runs with seeds seed, seed+1, ...; one run otherwise
                episodes = make_episodes(protocol, dataset.subset(names), names, shots, cfg.seed + s, cfg.num_splits,
                                         episodes=cfg.episodes, class_uniform=class_uniform)
                jobs += [(str(init_path), data_key, cfg.size, ep, params, cfg.seed + s, s == 0 and i < OVERLAY_EPISODES,
                          spec) for i, ep in enumerate(episodes)]
                keys += [(cfg.seed + s, ep.cls, ep.split) for ep in episodes]
            if not jobs:
                raise ValueError(f"--shots {shots}: no {cfg.split} task of {cfg.data} can serve {shots} support "
                                 "images and its query images; use fewer shots or more images per class")
            order = {key: i for i, key in enumerate(keys)}
            finished = {key: rows for key, rows in done.get(shots, {}).items() if key in order}
            todo = [i for i, key in enumerate(keys) if key not in finished]
            if finished:
                run.log(f"{shots}-shot: resuming; {len(finished)} of {len(keys)} episodes are already in "
                        f"{episodes_path.name}")
            bar = tqdm(total=len(jobs), initial=len(finished), desc=f"evaluate {shots}-shot", unit="episode",
                       disable=not progress, dynamic_ncols=True)
            try:
                with episodes_path.open("a") as fh:
                    for i, (episode_rows, example) in zip(todo, pool.map(episode_job, [jobs[i] for i in todo])):
                        seed = keys[i][0]
                        finished[keys[i]] = [{**r, "seed": seed} for r in episode_rows]
                        fh.writelines(json.dumps(r) + "\n" for r in finished[keys[i]])  # one episode at a time
                        fh.flush()
                        if example is not None:
                            kept.append((shots, *example))
                        bar.update()
            except DivergedError as err:
                raise DivergedError(f"U diverged while evaluating ({err}); try a smaller --u-lr than {params.lr:g} "
                                    "(finished episodes are kept: run the command again to resume)") from None
            bar.close()
            # Rows in episode order, so a resumed evaluation reduces exactly as an uninterrupted one; only the
            # episodes of the current settings count.
            rows = [r for key in sorted(finished, key=order.__getitem__) for r in finished[key]]
            summary = results["shots"][str(shots)] = summarise(rows)
            results["update_params_per_shot"][str(shots)] = {**params.as_dict(), "source": source}
            run.log(f"{shots}-shot: mean IoU {100 * summary['paper_miou']['mean']:.2f} "
                    f"± {100 * summary['paper_miou']['ci95']:.2f} % over {summary['paper_miou']['n']} task splits "
                    f"({summary['paper_miou']['interval']} interval); "
                    f"class-pooled mIoU {100 * summary['hsnet_miou']['mean']:.2f} %"
                    + (f" (mean over {seeds} seeds {100 * summary['seeds']['hsnet_miou']['mean']:.2f} %)"
                       if "seeds" in summary else "")
                    + f", FB-IoU {100 * summary['fb_iou']['mean']:.2f} %"
                    + (f"; floors: all foreground {100 * summary['floors']['all_foreground']['paper_miou']['mean']:.2f} %, "
                       f"support rate {100 * summary['floors']['support_rate']['paper_miou']['mean']:.2f} %"
                       if "floors" in summary else ""))
    finally:
        if own_pool:
            pool.close()
    if label or cfg.label:
        results["label"] = label or cfg.label
    results["seconds"] = time.monotonic() - started
    atomic_write(run.file(RESULTS), lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2) + "\n"))
    if kept:
        arrays = {"shots": np.array([k[0] for k in kept]), "images": np.stack([k[1] for k in kept]),
                  "masks": np.stack([k[2] for k in kept]), "probs": np.stack([k[3] for k in kept])}
        atomic_write(run.file(PREDICTIONS), lambda tmp: np.savez_compressed(open(tmp, "wb"), **arrays))
    return results


def previous_rows(path: Path) -> dict[int, dict[tuple[int, str, int], list[dict]]]:
    """shots -> (seed, class, split) -> the rows already in episodes.jsonl. A torn last line (a write killed
    midway) is cut off the file, so appending continues it cleanly."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # whatever follows the last newline is a torn write
    rows = [json.loads(line) for line in data[:end].decode().splitlines() if line.strip()]
    if end != len(data):
        with path.open("r+b") as fh:
            fh.truncate(end)
    found: dict[int, dict[tuple[int, str, int], list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        found[r["shots"]][(r.get("seed", 0), r["class"], r["split"])].append(r)
    return found


def recompute(run_dir: str | Path) -> dict[str, dict]:
    """Every reduction again, from episodes.jsonl alone."""
    rows = read_jsonl(Path(run_dir) / EPISODES)
    by_shots: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_shots[r["shots"]].append(r)
    return {str(k): summarise(v) for k, v in sorted(by_shots.items())}
