"""Update-hyperparameter optimisation (UHO, paper §3.3, §5.3, App. B): tune omega after meta-training.

For a fixed initialization, Bayesian optimisation with a Gaussian process (Optuna's GPSampler; the first half of
the trials random, log-uniform for the learning rate) maximises mean IoU over validation tasks. The number of
steps is not searched: per task, early stopping finds the best step, and the trial's steps are the median over
tasks (App. B). Then every task is scored at that median step count.

Early stopping is judged on labelled images that are never scored: the task's images outside its support and
query sets when there are any (1-shot on 10-image classes leaves 4), otherwise a held-out 20 % (at least one image)
of the support set (5-shot on 10-image classes), in which case the task is retrained on its whole support set for
the median steps. The reference instead stopped on the very query images it scored (REFERENCE §5), an optimistic
bias. Every searched value (lr, and optionally dropout, augmentation rate, batch size) is carried into the
written update-parameters file; the reference kept only lr and steps.

The study lives in Optuna storage: a SQLite file by default, or any URL (PostgreSQL for many machines; a
`journal:PATH` file), so several `tune` processes share one study, and an interrupted study resumes where it
stopped. A trial whose adaptation diverges (NaN loss) is recorded as failed and the study goes on.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import optuna

from fewshotseg.adaptation import METHODS, MethodSpec
from fewshotseg.config import SIZE, option
from fewshotseg.data.splits import SPLITS
from fewshotseg.data.tasks import TaskTensors, episode_rng
from fewshotseg.errors import UserError
from fewshotseg.evaluation import jobs
from fewshotseg.evaluation.early_stopping import EarlyStopping, early_stopping
from fewshotseg.evaluation.protocols import Episode, paper_episodes, run_episode
from fewshotseg.initializations.adapting import init_update_params
from fewshotseg.meta_learning.batchnorm import POLICIES
from fewshotseg.meta_learning.update_routine import DivergedError, UpdateParams
from fewshotseg.models.efficientlab import ModelFields
from fewshotseg.runs.curves import Curves
from fewshotseg.runs.run_dir import INIT, STUDY, TRIALS, UPDATE_PARAMS, RunDir, atomic_write, claimed
from fewshotseg.runs.workers import Pool, WorkerState, process_alive

# name -> (low, high, log scale, integer). Paper App. B: lr in [5e-4, 5e-2]; EfficientLab-6-3 also searched
# dropout [0.2, 0.5], augmentation rate [0.5, 1] and batch size [1, 10].
SEARCH_SPACE = {
    "lr": (5e-4, 5e-2, True, False),
    "dropout": (0.2, 0.5, False, False),
    "aug_rate": (0.5, 1.0, False, False),
    "batch_size": (1, 10, False, True),
    "head_init": ("init", "probe"),  # LP-FT: start from the linear probe's classifier (categorical)
}
# The other adaptation methods: what `tune --method` searches (numbers as above; a tuple of strings is categorical).
FEATURE_SETS = ("skip+deep", "skip+deep+decoder", "skip+decoder", "deep+decoder", "decoder")
METHOD_SPACE: dict[str, dict[str, tuple]] = {
    # refine_radius 0 is no refinement; the shipped probe's 32 px was chosen at 224 px (README, "The general ...")
    "probe": {"l2": (1e-5, 1e-1, True, False), "features": FEATURE_SETS, "refine_radius": (0, 48, False, True)},
    "prototype": {"temperature": (1.0, 100.0, True, False), "features": FEATURE_SETS,
                  "refine_radius": (0, 48, False, True)},
    "rf": {"sigma_max": (4.0, 32.0, True, False), "max_depth": (4, 20, False, True)},
}


@dataclass
class TuneConfig(ModelFields):
    init: str = option("", "initialization to tune U for: a checkpoint or run folder, random or imagenet", required=True)
    data: str = option("", "dataset whose validation classes are tuned on", required=True)
    run_dir: str = option("", "output folder: study (SQLite by default), trials.json, update_params.json", required=True)
    trials: int = option(30, "trials in the study, shared by all processes (paper: 30, the first half random)")
    storage: str = option("", "Optuna storage URL (sqlite:///f.db, postgresql://..., journal:PATH); default "
                              "sqlite:///RUN_DIR/study.db")
    study: str = option("uho", "study name inside the storage")
    search: str = option("lr", "comma-separated: lr, dropout, aug_rate, batch_size (paper EL-3: lr; EL-6-3: all)")
    shots: int = option(5, "support images per validation task")
    max_steps: int = option(20, "early-stopping maximum steps (paper: 20 for EL-3, 80 for EL-6-3)")
    patience: int = option(50, "early-stopping patience in steps (the reference: 50)")
    holdout: float = option(0.2, "fraction of the support held out for early stopping when no other image is left")
    val_tasks: int = option(0, "validation tasks per trial, a seeded subset (0: all; paper: 200)")
    update_params: str = option("", "base update parameters (unsearched values); default: the paper's Table 3")
    splits: str = option("auto", "class split scheme (see meta-train)")
    split: str = option("val", "which classes to tune on", choices=SPLITS)
    fold: int = option(-1, "PASCAL-5i / COCO-20i fold (0-3): tune on its training classes' evaluation images")
    size: int = option(0, "square image size in pixels (0: the initialization's own, from its card; else 224)",
                       **SIZE, or_zero=True)
    seed: int = option(0, "seed of the episodes and the sampler")
    workers: int = option(1, "processes running the validation tasks of a trial in parallel (CPU)")
    method: str = option("card", "adaptation method to tune: card (the initialization's own), finetune (UHO of U), "
                                 "probe (l2, features), prototype (temperature, features) or rf (sigma_max, "
                                 "max_depth)", choices=("card", *METHODS))
    bn_policy: str = option("", "U's BatchNorm regime while tuning and in the result (paper, transductive, frozen, "
                                "support); default: U's own, the one adapt deploys", choices=("", *POLICIES))
    lr_range: str = option("", "LOW,HIGH of the searched learning rate (log-uniform; default: the paper's 5e-4,5e-2): "
                               "widen it when the best lr lands on a bound")
    device: str = option("auto", "cpu, cuda or auto")
    # A run folder's study may be continued to more trials.
    FREE: ClassVar[tuple[str, ...]] = ("trials",)


def storage_for(url: str, run_dir: Path):
    """An Optuna storage object for a URL; RDB storages get heartbeats so a killed trial is failed, not stuck."""
    if not url:
        url = f"sqlite:///{(run_dir / STUDY).resolve()}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        if not path.parent.is_dir():
            raise StorageError(f"--storage {url}: the folder {path.parent} does not exist; create it or choose "
                               "another journal file")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    engine = check_reachable(url)
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=10, grace_period=40)
        except SQLAlchemyError:
            # Workers started together race to create the schema in a new database; the loser finds it made.
            if attempt == 5:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


class StorageError(UserError):
    """A study storage that is malformed or cannot be reached."""


STORAGE_FORMS = "sqlite:///FILE, postgresql://USER[:PASSWORD]@HOST[:PORT]/DB or journal:FILE"
CONNECT_SECONDS = 5  # a storage that does not answer fails within seconds, never hangs


def check_reachable(url: str) -> dict | None:
    """Parse the URL and open one connection (within a few seconds); returns the engine arguments to use.

    Errors show the URL with its password hidden, and the reason."""
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except ArgumentError:
        raise StorageError(f"--storage {url}: not a storage URL; use {STORAGE_FORMS}") from None
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        folder = Path(parsed.database or ".").resolve().parent
        if parsed.database and not folder.is_dir():
            raise StorageError(f"--storage {shown}: the folder {folder} does not exist; create it or choose "
                               "another file")
        engine = {"connect_args": {"timeout": 120}}
    elif backend in ("postgresql", "mysql"):
        engine = {"connect_args": {"connect_timeout": CONNECT_SECONDS}}
    else:
        engine = None
    try:
        probe = sqlalchemy.create_engine(parsed, **(engine or {}))
    except (NoSuchModuleError, ArgumentError, ImportError) as err:
        hint = "; pip install -e '.[postgres]'" if backend == "postgresql" else f"; use {STORAGE_FORMS}"
        raise StorageError(f"--storage {shown}: no driver for {parsed.drivername!r} ({err.__class__.__name__})"
                           f"{hint}") from None
    try:
        with probe.connect():
            pass
    except SQLAlchemyError as err:
        reason = " ".join(str(getattr(err, "orig", None) or err).split())[:300].replace(parsed.password or "\0", "***")
        raise StorageError(f"--storage {shown}: cannot connect ({reason}); check that the server runs and the URL "
                           "is right") from None
    finally:
        probe.dispose()
    return engine


def early_stopping_sets(episode: Episode, holdout: float) -> tuple[list[int], list[int], bool]:
    """(train, held-out, retrain) local indices for one task's early stopping; never the query images."""
    if episode.rest:
        return list(episode.support), list(episode.rest), False
    if len(episode.support) < 2:
        raise ValueError(f"{episode.cls}: {len(episode.support)}-shot early stopping needs labelled images "
                         "beyond the support and query sets")
    n_out = max(1, round(holdout * len(episode.support)))
    return list(episode.support[:-n_out]), list(episode.support[-n_out:]), True


def usable_classes(dataset, names: list[str], cfg: TuneConfig, run: RunDir) -> list[str]:
    """The classes with the images a task needs: k support + 5 query, and for 1 shot one more image, since early
    stopping is judged on labelled images outside the support and query sets (see `early_stopping_sets`). Classes
    left out are logged; none left is refused before anything runs, with the numbers."""
    from fewshotseg.data.dataset import DataError

    need = cfg.shots + 5 + (1 if cfg.shots < 2 else 0)
    small = [n for n in names if dataset.count(n) < need]
    kept = [n for n in names if dataset.count(n) >= need]
    why = f"{cfg.shots} support + 5 query" + (" + 1 to judge early stopping on (never a scored image)"
                                             if cfg.shots < 2 else "")
    if not kept:
        most = max((dataset.count(n) for n in names), default=0)
        fewer = most - 5
        fix = f"use --shots {fewer} or fewer, or add labelled images" if fewer >= 2 else "add labelled images"
        raise DataError(f"--shots {cfg.shots}: a {cfg.shots}-shot UHO task needs {need} images per class ({why}); "
                        f"the {len(names)} {cfg.split} classes of {cfg.data} have at most {most}. Nothing was run: "
                        f"{fix} (at least {need} per class)")
    if small:
        shown = ", ".join(f"{n} ({dataset.count(n)})" for n in small[:5]) + (" ..." if len(small) > 5 else "")
        run.log(f"left out {len(small)} of the {len(names)} {cfg.split} classes with fewer than the {need} images a "
                f"{cfg.shots}-shot task needs ({why}): {shown}")
    return kept


def median_steps(best_steps: list[int]) -> int:
    """The paper's rule: the median of the per-task best steps (rounded down to a whole step)."""
    return int(np.median(best_steps))


def early_stopping_job(state: WorkerState, init_path: str, data: str, size: int, episode: Episode,
                       params: UpdateParams, stopping: EarlyStopping, holdout: float, seed: int) -> dict:
    """Early stopping on one validation task; also records the query IoU along the way when the trajectory is
    the one the task is finally scored on (no images carved out of the support)."""
    dataset = jobs.dataset(state, data, size)
    task = TaskTensors.from_dataset(dataset, episode.cls)
    train, held, retrain = early_stopping_sets(episode, holdout)
    rng = episode_rng(seed, 3, episode.class_index, episode.split, len(episode.support))
    result = early_stopping(
        jobs.learner(state, init_path), jobs.init(state, init_path), task.take(train), task.take(held), params,
        stopping, rng, monitor=None if retrain else task.take(list(episode.query)),
    )
    return {"class": episode.cls, "best_step": result.best_step, "best_score": result.best_score,
            "scores": result.scores, "query_scores": result.monitored, "retrain": retrain}


def score_job(state: WorkerState, init_path: str, data: str, size: int, episode: Episode, params: UpdateParams,
              steps: int, seed: int) -> float:
    rows = run_episode(jobs.learner(state, init_path), jobs.init(state, init_path), jobs.dataset(state, data, size),
                       episode, params, seed=seed, steps=steps)
    return float(np.mean([r["iou"] for r in rows]))


def suggest_values(trial: optuna.Trial, space: dict[str, tuple], search: list[str]) -> dict:
    values: dict = {}
    for name in search:
        if all(isinstance(v, str) for v in space[name]):
            values[name] = trial.suggest_categorical(name, list(space[name]))
            continue
        low, high, log, integer = space[name]
        if integer:
            values[name] = trial.suggest_int(name, low, high, log=log)
        else:
            values[name] = trial.suggest_float(name, low, high, log=log)
    return values


def method_job(state: WorkerState, init_path: str, data: str, size: int, episode: Episode, spec: MethodSpec,
               seed: int) -> float:
    rows = run_episode(jobs.learner(state, init_path), jobs.init(state, init_path), jobs.dataset(state, data, size),
                       episode, UpdateParams(), seed=seed, method=spec)
    return float(np.mean([r["iou"] for r in rows]))


def method_settings(method: str, values: dict) -> dict:
    return {**values, "features": values["features"].split("+")} if "features" in values else dict(values)


def make_method_objective(pool: Pool, init_path: str, cfg: TuneConfig, episodes: list[Episode], spec: MethodSpec):
    """A frozen-feature method or the random forest: a trial's settings scored on the validation tasks directly
    (nothing to early-stop)."""
    base = spec.as_dict()["settings"]

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        values = method_settings(spec.method, suggest_values(trial, METHOD_SPACE[spec.method],
                                                             list(METHOD_SPACE[spec.method])))
        trial_spec = MethodSpec.of(spec.method, {**base, **values})
        jobs = [(init_path, cfg.data, cfg.size, ep, trial_spec, cfg.seed) for ep in episodes]
        scores = list(pool.map(method_job, jobs))
        trial.set_user_attr("task_scores", scores)
        return float(np.mean(scores))

    return objective


def suggest(trial: optuna.Trial, base: UpdateParams, search: list[str],
            lr_range: tuple[float, float] | None = None) -> UpdateParams:
    space = dict(SEARCH_SPACE)
    if lr_range is not None:
        space["lr"] = (*lr_range, *SEARCH_SPACE["lr"][2:])
    return base.replace(**suggest_values(trial, space, search))


def lr_range(cfg: TuneConfig) -> tuple[float, float]:
    """The searched learning-rate range: SEARCH_SPACE's (the paper's [5e-4, 5e-2]) unless --lr-range LOW,HIGH."""
    if not cfg.lr_range:
        return SEARCH_SPACE["lr"][0], SEARCH_SPACE["lr"][1]
    try:
        low, high = (float(x) for x in cfg.lr_range.split(","))
    except ValueError:
        raise UserError(f"--lr-range {cfg.lr_range!r}: write LOW,HIGH, e.g. 5e-4,5e-2") from None
    if not 0 < low < high:
        raise UserError(f"--lr-range {cfg.lr_range!r}: need 0 < LOW < HIGH")
    return low, high


def make_objective(pool: Pool, init_path: str, cfg: TuneConfig, episodes: list[Episode], base: UpdateParams,
                   search: list[str]):
    stopping = EarlyStopping(patience=cfg.patience, max_steps=cfg.max_steps)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = suggest(trial, base, search, lr_range(cfg))
        jobs = [(init_path, cfg.data, cfg.size, ep, params, stopping, cfg.holdout, cfg.seed) for ep in episodes]
        found = list(pool.map(early_stopping_job, jobs))
        steps = median_steps([f["best_step"] for f in found])
        scores, rescore = [], []
        for i, f in enumerate(found):
            if not f["retrain"] and len(f["query_scores"]) >= steps:
                scores.append(f["query_scores"][steps - 1])  # the same trajectory a rerun would follow
            else:
                scores.append(None)
                rescore.append(i)
        jobs = [(init_path, cfg.data, cfg.size, episodes[i], params, steps, cfg.seed) for i in rescore]
        for i, score in zip(rescore, pool.map(score_job, jobs)):
            scores[i] = score
        value = float(np.mean(scores))
        trial.set_user_attr("median_steps", steps)
        trial.set_user_attr("best_steps", [f["best_step"] for f in found])
        trial.set_user_attr("task_scores", scores)
        return value

    return objective


def tune(cfg: TuneConfig, *, overwrite: bool = False, progress: bool = True, pool: Pool | None = None) -> dict:
    """Tune U (or another adaptation method) for `cfg.init` on validation tasks; the best settings go to the run
    folder (update_params.json or method.json) and become the default of the initialization's card for
    `cfg.shots` (`result["card"]`: that card's folder; None for random, imagenet and packaged initializations,
    whose cards are not changed). The run folder is held while it is written (`runs.run_dir.claimed`): the same
    settings continue its study, another run's results are refused unless `overwrite`."""
    from fewshotseg.initializations.pretrained import adopt_init_architecture

    cfg = adopt_init_architecture(cfg)
    with claimed(cfg.run_dir, "tune", cfg, free=cfg.FREE, overwrite=overwrite):
        result = _tune(cfg, progress=progress, pool=pool)
        folder = record_in_card(cfg, result)
    return {**result, "card": str(folder) if folder is not None else None}


def record_in_card(cfg: TuneConfig, result: dict) -> Path | None:
    """Make a tune result the default of the card of the initialization it was tuned for (the replaced one goes to
    the card's history), with its objective as a metric; the card's folder, or None where cards are not changed."""
    from fewshotseg.initializations.pretrained import record_method, record_tuned

    data = f"{cfg.data} ({cfg.split} classes)"
    if "update_params" not in result:  # another adaptation method than U
        return record_method(cfg.init, {"method": result["method"], "settings": result["settings"]},
                             f"tune: {cfg.run_dir}/method.json",
                             {"data": data, "protocol": "tune objective (validation)", "shots": cfg.shots,
                              "mean_iou": result["objective"], "episodes": cfg.val_tasks, "method": result["method"]})
    return record_tuned(cfg.init, cfg.shots, result["update_params"], f"tune: {cfg.run_dir}/update_params.json",
                        {"data": data, "protocol": "UHO objective (validation)", "shots": cfg.shots,
                         "mean_iou": result["objective"], "episodes": cfg.val_tasks})


def _tune(cfg: TuneConfig, *, progress: bool, pool: Pool | None) -> dict:
    from fewshotseg.data.cache import load_split
    from fewshotseg.evaluation.evaluate import select_tasks
    from fewshotseg.initializations.weights import write_for_workers
    from fewshotseg.runs.device import choose_device

    search = [s.strip() for s in cfg.search.split(",") if s.strip()]
    unknown = sorted(set(search) - set(SEARCH_SPACE))
    if unknown or not search:
        raise ValueError(f"unknown --search entries {unknown}; choose from {', '.join(SEARCH_SPACE)}")
    run = RunDir(cfg.run_dir)
    if not cfg.size:
        from fewshotseg.initializations.pretrained import card_size

        cfg = replace(cfg, size=card_size(cfg.init) or 224)
    fold = cfg.fold if cfg.fold >= 0 else None
    dataset = load_split(cfg.data, cfg.size, cfg.split, splits=cfg.splits, fold=fold)
    data_key = (cfg.data, cfg.split, cfg.splits, fold)  # what each worker loads
    names = dataset.names
    names = usable_classes(dataset, select_tasks(names, cfg.val_tasks, cfg.seed), cfg, run)
    episodes = paper_episodes(dataset.subset(names), names, cfg.shots, splits=1, seed=cfg.seed)
    spec, spec_source = tuned_method(cfg)
    base, base_source = init_update_params(cfg.init, cfg.shots, file=cfg.update_params or None)
    if cfg.bn_policy:
        base = base.replace(bn_policy=cfg.bn_policy)
        base_source += f", BatchNorm {cfg.bn_policy} (--bn-policy)"
    if spec.method == "finetune":
        run.log(f"U's other settings (and the BatchNorm policy) from {base_source}")
    else:
        run.log(f"tuning the {spec.method} method (settings not searched: {spec_source})")

    init_path = run.file(INIT)  # seeded: a resumed study rewrites the same network
    described = write_for_workers(cfg.init, cfg.model_config(dropout=base.dropout), init_path, seed=cfg.seed)

    storage = storage_for(cfg.storage, run.path)
    sampler = _gp_sampler(cfg, 0)
    study = optuna.create_study(study_name=cfg.study, storage=storage, direction="maximize", sampler=sampler,
                                load_if_exists=True)
    _check_same_study(study, cfg, described)
    _fail_dead_local_trials(study, exclusive=not cfg.storage)
    run.log(f"UHO for {described}: {len(episodes)} {cfg.split} tasks, {cfg.shots}-shot, searching {search}, "
            f"{cfg.trials} trials in study {cfg.study!r}; {_count(study)} trial(s) already there")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from tqdm import tqdm

    bar = tqdm(total=cfg.trials, initial=_count(study), desc=f"tune {cfg.shots}-shot", unit="trial",
               disable=not progress, dynamic_ncols=True)
    own_pool = pool is None
    pool = pool or Pool(cfg.workers, str(choose_device(cfg.device)))
    try:
        objective = (make_objective(pool, str(init_path), replace(cfg, data=data_key), episodes, base, search)
                     if spec.method == "finetune" else
                     make_method_objective(pool, str(init_path), replace(cfg, data=data_key), episodes, spec))
        curves = Curves(run.path)
        while _count(study) < cfg.trials:
            # A sampler seeded by the trial's position: a study resumed after a kill proposes what an uninterrupted
            # one would have (trials failed by the kill do not count).
            study.sampler = _gp_sampler(cfg, _count(study))
            study.optimize(objective, n_trials=1, catch=(DivergedError,))
            last = study.trials[-1]
            curves.scalars(last.number, {"uho/objective": last.value, "uho/steps": last.user_attrs.get("median_steps"),
                                         **{f"uho/{k}": v for k, v in last.params.items()}})
            bar.n = _count(study)
            bar.refresh()
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if done:
                best = max(done, key=lambda t: t.value)
                if spec.method == "finetune":
                    bar.set_postfix(best=f"{100 * best.value:.1f}", lr=f"{best.params.get('lr', base.lr):.2g}",
                                    steps=best.user_attrs.get("median_steps"))
                else:
                    bar.set_postfix(best=f"{100 * best.value:.1f}", **{k: str(v) for k, v in best.params.items()})
    finally:
        if own_pool:
            pool.close()
        if "curves" in locals():
            curves.close()
    bar.close()
    if spec.method != "finetune":
        return write_method_results(study, run, cfg, spec, described)
    return write_results(study, run, cfg, base, described)


def tuned_method(cfg: TuneConfig) -> tuple[MethodSpec, str]:
    from fewshotseg.initializations.adapting import resolve_method
    from fewshotseg.initializations.pretrained import init_card

    return resolve_method(init_card(cfg.init), cfg.method)


def write_method_results(study: optuna.Study, run: RunDir, cfg: TuneConfig, spec: MethodSpec, described: str) -> dict:
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "random": t.number < max(1, cfg.trials // 2)} for t in study.trials]
    _write_json(run.file(TRIALS), {"study": cfg.study, "shots": cfg.shots, "init": cfg.init,
                                   "described": described, "method": spec.method, "trials": trials})
    if not complete:
        raise RuntimeError(f"study {cfg.study!r}: no trial completed (all {len(study.trials)} failed)")
    best = max(complete, key=lambda t: t.value)
    best_spec = MethodSpec.of(spec.method, {**spec.as_dict()["settings"], **method_settings(spec.method, best.params)})
    result = {**best_spec.as_dict(), "shots": cfg.shots, "objective": best.value, "trial": best.number,
              "study": cfg.study, "init": cfg.init, "described": described}
    _write_json(run.file("method.json"), result, indent=2)
    run.log(f"best of {len(complete)} trials: mean IoU {100 * best.value:.2f} % with {best_spec.describe()} "
            f"-> {run.file('method.json')}")
    return result


def write_results(study: optuna.Study, run: RunDir, cfg: TuneConfig, base: UpdateParams, described: str) -> dict:
    trials = [{
        "number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
        "median_steps": t.user_attrs.get("median_steps"), "best_steps": t.user_attrs.get("best_steps"),
        "random": t.number < max(1, cfg.trials // 2),
    } for t in study.trials]
    _write_json(run.file(TRIALS), {"study": cfg.study, "shots": cfg.shots, "init": cfg.init,
                                   "described": described, "search": cfg.search, "max_steps": cfg.max_steps,
                                   "trials": trials})
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"study {cfg.study!r}: no trial completed (all {len(study.trials)} failed)")
    best = max(complete, key=lambda t: t.value)
    params = base.replace(**best.params, steps=best.user_attrs["median_steps"])
    result = {"update_params": params.as_dict(), "shots": cfg.shots, "objective": best.value, "trial": best.number,
              "study": cfg.study, "init": cfg.init, "described": described, "search": cfg.search,
              "failed_trials": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)}
    _write_json(run.file(UPDATE_PARAMS), result, indent=2)
    run.log(f"best of {len(complete)} trials: mean IoU {100 * best.value:.2f} % with lr {params.lr:.3g}, "
            f"{params.steps} steps (median early-stopping step) -> {run.file('update_params.json')}")
    low, high = lr_range(cfg)
    if "lr" in best.params and (best.params["lr"] < low * 1.25 or best.params["lr"] > high / 1.25):
        run.log(f"warning: the best lr {best.params['lr']:.3g} lies at the edge of the searched range [{low:g}, "
                f"{high:g}]; the optimum may lie outside it: widen --lr-range and tune again")
    if best.user_attrs.get("median_steps") == cfg.max_steps:
        run.log(f"warning: the median early-stopping step is the cap --max-steps {cfg.max_steps}; more steps may be "
                "better: raise --max-steps and tune again")
    return result


def _write_json(path: Path, value, indent: int = 1) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=indent) + "\n"))


def _count(study: optuna.Study) -> int:
    """Trials that count toward --trials: complete, running, or failed by their own doing (a divergence), not
    those a killed process left behind."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING)
    return sum(not t.user_attrs.get("interrupted") for t in study.get_trials(deepcopy=False, states=states))


def _gp_sampler(cfg, offset: int):
    """Optuna's GPSampler, half the trials random first, seeded by the trial's position. Optuna marks it
    experimental; the warning it prints at every trial says nothing the user can act on, so it is not shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.GPSampler(n_startup_trials=max(1, cfg.trials // 2), seed=_sampler_seed(cfg) + offset)


def _sampler_seed(cfg: TuneConfig) -> int:
    # One process: reproducible. Several processes sharing a study must not propose the same random trials.
    return cfg.seed if not cfg.storage else cfg.seed * 100_003 + os.getpid()


def _check_same_study(study: optuna.Study, cfg: TuneConfig, described: str) -> None:
    spec, _ = tuned_method(cfg)
    identity = {"init": described, "data": cfg.data, "shots": cfg.shots, "search": cfg.search, "size": cfg.size,
                "max_steps": cfg.max_steps, "split": cfg.split}
    if spec.method != "finetune":  # studies of U keep their identity of before methods existed
        identity["method"] = spec.method
    if cfg.bn_policy:
        identity["bn_policy"] = cfg.bn_policy
    if cfg.lr_range:
        identity["lr_range"] = cfg.lr_range
    saved = study.user_attrs.get("identity")
    if saved is None:
        study.set_user_attr("identity", identity)
    elif saved != identity:
        raise ValueError(f"study {cfg.study!r} was created for {saved}; this run is {identity}. "
                         "Use another --study name")


def _fail_dead_local_trials(study: optuna.Study, *, exclusive: bool = False) -> None:
    """Trials left RUNNING by a process of this host that no longer exists (killed) become FAIL, so a resumed
    study does not wait for them (RDB storages also fail them through heartbeats, from any host). With `exclusive`
    (the run folder's own study, which the lock on the folder gives to this process alone) every RUNNING trial is
    dead, including one killed before it recorded its process."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if exclusive or (t.user_attrs.get("host") == host and not process_alive(t.user_attrs.get("pid", -1))):
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


