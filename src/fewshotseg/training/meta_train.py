"""Meta-training: one loop, read top to bottom.

    for each meta-iteration i:
        sample meta_batch training classes            (seeded by (seed, i): identical on every rank)
        for each task k on this rank:                  (task k runs on rank k % world)
            delta_k = Reptile / FOMAML / FOMAML* difference after U      (MetaLearner.record_task)
        all-reduce the deltas and the adapted BN statistics
        theta.grad = -mean_k delta_k ; outer optimizer step with epsilon_i linearly decayed from meta_step to
            meta_step_final (SGD: theta + epsilon_i * mean delta) ; BN statistics toward the tasks'
                                                                         (MetaLearner.apply)
        every eval_interval: mean IoU of U(theta) on held-out validation tasks
        every checkpoint_interval: atomic checkpoint (model, outer optimizer, RNG, iteration, config)

Every random choice of iteration i, task k comes from a generator seeded by (seed, i, k), so a run resumed from a
checkpoint, or spread over several processes, computes exactly what an uninterrupted one-process run computes.
Deltas are reduced per task slot (each rank fills its slots, zeros elsewhere) and summed in task order on every
rank, which keeps the sum bit-identical to the one-process sum.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from fewshotseg.adaptation import MethodSpec
from fewshotseg.config import as_dict, option
from fewshotseg.data.dataset import SegmentationDataset
from fewshotseg.data.tasks import TaskTensors, episode_rng, sample_classes
from fewshotseg.errors import DivergedError, RunFolderError, SettingError
from fewshotseg.evaluation.intervals import Estimate, t_interval
from fewshotseg.evaluation.protocols import paper_episodes, run_episode
from fewshotseg.initializations.card import read_card
from fewshotseg.initializations.pretrained import adopt_init_architecture, write_run_card
from fewshotseg.initializations.weights import load_initialization, model_state, save_initialization
from fewshotseg.meta_learning.batchnorm import POLICIES
from fewshotseg.meta_learning.meta_learner import OUTER_OPTIMIZERS, MetaLearner
from fewshotseg.meta_learning.meta_update import ALGORITHMS, check_algorithm
from fewshotseg.meta_learning.update_routine import OPTIMIZERS, Learner, UpdateParams, check_finite_weights
from fewshotseg.models.efficientlab import ModelFields
from fewshotseg.runs.curves import Curves
from fewshotseg.runs.provenance import environment
from fewshotseg.runs.run_dir import CHECKPOINT, CONFIG, MODEL, RunDir, claimed
from fewshotseg.training import distributed
from fewshotseg.training.budget import Budget
from fewshotseg.training.checkpoint import (
    check_config_file,
    check_unchanged,
    resumable_state,
    save_checkpoint,
)
from fewshotseg.training.datasets import load_train_val


@dataclass
class MetaTrainConfig(ModelFields):
    data: str = option("", "dataset: a folder in the FSS-1000 layout (see README, Data)", required=True)
    run_dir: str = option("", "run folder: config, log, metrics and checkpoints", required=True)
    splits: str = option("auto", "class split scheme: auto, fss1000, fss1000-all, fp-k, hsnet:DIR, file:PATH")
    fold: int = option(-1, "PASCAL-5i / COCO-20i fold (0-3): train on the other classes; -1 for other datasets")
    size: int = option(224, "square image size in pixels (paper: 224)")
    algorithm: str = option("fomaml-star", "reptile, fomaml (disjoint D^tr/D^val), fomaml-star (with replacement) or "
                                           "r2d2 (the inner loop is the ridge probe, solved in closed form)",
                            choices=ALGORITHMS)
    init: str = option("random", "starting weights: random, imagenet or a checkpoint")
    iterations: int = option(50000, "meta-iterations (paper: 50,000)")
    meta_batch: int = option(5, "tasks per meta-iteration (paper: 5)")
    meta_optimizer: str = option("sgd", "outer optimizer on the pseudo-gradient: sgd (paper) or adam",
                                 choices=OUTER_OPTIMIZERS)
    meta_step: float = option(0.1, "initial meta step size epsilon / outer learning rate (paper: 0.1)")
    meta_step_final: float = option(1e-5, "final meta step size, reached by linear decay (paper: 1e-5)")
    inner_lr: float = option(0.005, "inner-loop learning rate (paper: 0.005)")
    inner_steps: int = option(5, "inner steps per task; for FOMAML the last one is on D^val (paper: 5)")
    inner_batch: int = option(8, "inner mini-batch size (paper: 8)")
    inner_optimizer: str = option("sgd", "inner optimizer: sgd (paper) or adam", choices=OPTIMIZERS)
    train_shots: int = option(0, "examples per task: Reptile's D, or FOMAML's D^tr+D^val pool (0: 5 for Reptile, "
                                 "10 for FOMAML, the paper's best)")
    val_shots: int = option(5, "FOMAML's |D^val| (the reference's --foml-tail 5)")
    dropout: float = option(0.2, "final-layer dropout while adapting (paper: 0.2)")
    aug_rate: float = option(0.5, "probability that an example is augmented (paper: 0.5)")
    l2: float = option(5e-4, "L2 coefficient lambda on ||theta||^2 over non-BN weights (paper: 5e-4)")
    bn_policy: str = option("paper", "BatchNorm policy: paper, transductive, frozen or support", choices=POLICIES)
    seed: int = option(0, "seed of every random choice")
    eval_interval: int = option(500, "meta-iterations between validation evaluations (0: never)")
    eval_tasks: int = option(100, "validation tasks per evaluation (the reference monitored 100)")
    eval_shots: int = option(5, "support images per validation task")
    checkpoint_interval: int = option(100, "meta-iterations between checkpoints (the reference: 100)")
    threads: int = option(0, "torch threads per process (0: cores / processes)")
    device: str = option("auto", "cpu, cuda or auto")
    # Settings a run folder may be continued with other values of: how long and how often, not what is learnt.
    FREE: ClassVar[tuple[str, ...]] = ("iterations", "eval_interval", "eval_tasks", "checkpoint_interval")
    # Named presets (`--preset`): each says how it departs from the paper and why.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        # A few-minute CPU run (tinynet_e, 64 px). With the paper's Table 3 values (tuned for 50,000 SGD
        # meta-iterations) ~400 iterations give an initialization no better than random. Adam on the pseudo-gradient and
        # a 4x inner learning rate with 2 inner steps plus the D^val step learn within minutes on the built-in
        # benchmark. (An inner lr of 0.05 diverged after 75-225 iterations here: one SGD step at that rate rescales the
        # small convolutions that feed BatchNorm by ~10x.) At that inner lr, running statistics (updated at 1 % per
        # step) lag the adapted weights, so predictions normalise the query images with their own batch statistics (the
        # transductive policy); measured here on held-out tasks, 5-shot: 18.6 % mean IoU with the paper's policy, 37.1 %
        # transductive for the same initialization (random init: 1.9 % and 9.3 %).
        "cpu-quick": {
            "encoder": "tinynet_e", "size": 64, "meta_optimizer": "adam", "meta_step": 2e-3, "meta_step_final": 1e-5,
            "inner_lr": 0.02, "inner_steps": 3, "bn_policy": "transductive", "eval_interval": 100, "eval_tasks": 20,
            "checkpoint_interval": 50,
        },
    }

    def update_params(self) -> UpdateParams:
        return UpdateParams(
            lr=self.inner_lr, steps=self.inner_steps, batch_size=self.inner_batch, dropout=self.dropout,
            aug_rate=self.aug_rate, optimizer=self.inner_optimizer, l2=self.l2, bn_policy=self.bn_policy,
        )

    def shots(self) -> int:
        if self.train_shots:
            return self.train_shots
        return 5 if self.algorithm == "reptile" else 10

    def check(self) -> None:
        """Combinations: FOMAML's pool of `shots()` examples must leave D^tr at least one after D^val."""
        if self.algorithm != "reptile" and self.shots() <= self.val_shots:
            raise SettingError(f"setting --val-shots = {self.val_shots} leaves no D^tr examples in a pool of "
                               f"--train-shots = {self.shots()} ({self.algorithm}); allowed: --val-shots < "
                               "--train-shots")


# Changing these on --resume would silently change the run; everything else (eval cadence, threads) may change.
_FIXED_ON_RESUME = ("data", "size", "splits", "fold", "algorithm", "variant", "encoder", "meta_batch", "meta_optimizer",
                    "meta_step", "meta_step_final", "inner_lr", "inner_steps", "inner_batch", "inner_optimizer",
                    "train_shots", "val_shots", "dropout", "aug_rate", "l2", "bn_policy", "seed")


def meta_train(cfg: MetaTrainConfig, *, resume: bool = False, overwrite: bool = False, max_minutes: float = 0.0,
               started: float | None = None, continue_to: int | None = None) -> Path:
    """Meta-train an initialization; returns the path of the exported `model.safetensors`. `max_minutes` counts
    from `started` (a `time.monotonic()` value; the call when not given).

    The run folder is held while it is written (`runs.run_dir.claimed`): a folder another process writes, or that
    holds another run's results, is refused unless `overwrite` (which removes those results). On `resume`, the run
    continues to its own iteration count (as fitted to its time budget, if it had one), or to `continue_to` when
    that is another count than the one it was asked for (`--iterations` given with `--resume`): the meta step size
    then decays linearly over the new count from where the run stands. A config.yaml edited since the run wrote it
    is refused, showing the difference."""
    cfg = adopt_init_architecture(cfg)
    with claimed(cfg.run_dir, "meta-train", cfg, free=cfg.FREE, overwrite=overwrite, resume=resume):
        return _meta_train(cfg, resume=resume, max_minutes=max_minutes, started=started, continue_to=continue_to)


def _meta_train(cfg: MetaTrainConfig, *, resume: bool, max_minutes: float, started: float | None,
                continue_to: int | None) -> Path:
    check_algorithm(cfg.algorithm)
    budget = Budget(max_minutes, started=started) if max_minutes and not resume else None  # loading counts too
    ctx = distributed.setup(cfg.device, cfg.threads)
    run = RunDir(cfg.run_dir, writer=ctx.is_main)
    ckpt_path = run.file(CHECKPOINT)
    state = resumable_state(ckpt_path, resume)
    requested = cfg.iterations  # what the run was asked for, before any time budget refits it
    commands = [shlex.join(environment()["command"])]  # every process that ran it: the card records them
    if state is not None:
        check_unchanged(cfg, state["config"], _FIXED_ON_RESUME)
        check_config_file(run.file(CONFIG), state, _FIXED_ON_RESUME)
        commands = _commands(state, run) + commands
        requested = state.get("requested_iterations", state["config"]["iterations"])
        if continue_to is not None and continue_to not in (requested, state["config"]["iterations"]):
            if continue_to <= state["iteration"]:
                raise RunFolderError(f"--iterations {continue_to} with --resume: the run in {run.path} has already done "
                                     f"{state['iteration']} meta-iterations (of {state['config']['iterations']}); pass "
                                     f"more than {state['iteration']} to continue it further, or leave out --iterations "
                                     "to finish it")
            requested = continue_to
            cfg = replace(cfg, iterations=continue_to)
        else:
            cfg = replace(cfg, iterations=state["config"]["iterations"])  # as fitted to a time budget, if it was
        if max_minutes:
            print(f"note: --max-minutes is not applied on --resume; the run continues to {cfg.iterations} "
                  "meta-iterations (pass --iterations N with --resume to change that)", file=sys.stderr)

    train, val = load_train_val(cfg.data, cfg.size, cfg.splits, cfg.fold)

    torch.manual_seed(cfg.seed)  # a random initialization is a function of the seed
    model, described = load_initialization(cfg.init, cfg.model_config(dropout=cfg.dropout))
    model.to(ctx.device)
    params = cfg.update_params()
    meta = MetaLearner(model, cfg.algorithm, params, meta_optimizer=cfg.meta_optimizer, meta_step=cfg.meta_step,
                       meta_step_final=cfg.meta_step_final, iterations=cfg.iterations, train_shots=cfg.shots(),
                       val_shots=cfg.val_shots, bn_momentum=cfg.bn_momentum, device=ctx.device)
    learner, outer = meta.learner, meta.outer  # the working model U adapts; theta stays in `model`

    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        outer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        start = meta.iteration = state["iteration"]
        run.truncate_metrics(start)
        run.log(f"resumed from {ckpt_path} at iteration {start}")
        if cfg.iterations != state["config"]["iterations"]:
            run.log(f"continuing to {cfg.iterations} meta-iterations (the run was for {state['config']['iterations']}, "
                    f"as asked with --iterations); the meta step size now decays to {cfg.meta_step_final:g} over "
                    f"{cfg.iterations} iterations")
            run.write_config(as_dict(cfg))  # the run's record holds the iterations it really runs
    else:
        run.write_config(as_dict(cfg))
        run.log(f"meta-training {cfg.algorithm} from {described} on {len(train)} classes of {cfg.data} "
                f"at {cfg.size} px, {ctx.world} process(es) on {ctx.device}")

    val_episodes = _validation_episodes(val, cfg) if val is not None and cfg.eval_interval else []
    slots = torch.zeros(cfg.meta_batch, meta.slot_size, device=ctx.device)
    started = time.monotonic()
    limit = cfg.iterations
    curves = Curves(run.path, enabled=ctx.is_main, resume_from=start if state is not None else None)
    progress = tqdm(total=cfg.iterations, initial=start, desc=f"meta-train {cfg.algorithm}", disable=not ctx.is_main,
                    dynamic_ncols=True)
    it = start
    while it < cfg.iterations:
        step_started = time.monotonic()
        epsilon = meta.step_size(it)
        names = sample_classes(episode_rng(cfg.seed, 0, it), train.names, cfg.meta_batch)

        slots.zero_()
        for k, name in enumerate(names):
            if ctx.mine(k):
                meta.record_task(slots[k], TaskTensors.from_dataset(train, name), episode_rng(cfg.seed, 1, it, k))
        ctx.all_reduce_(slots)
        loss = meta.apply(slots)
        it += 1

        if not math.isfinite(loss):
            raise DivergedError(f"meta-training diverged at iteration {it} (inner loss {loss}); "
                                "lower --inner-lr or --meta-step")
        check_finite_weights(model, f"after the meta-update of iteration {it}; lower --meta-step or --inner-lr")
        record = {"iteration": it, "loss": loss, "meta_step": epsilon}
        extra_started = time.monotonic()
        # Under a time budget, one validation right after the warm-up measures what the final one will cost.
        first_under_budget = budget is not None and it == start + budget.warmup
        if val_episodes and (it % cfg.eval_interval == 0 or it == cfg.iterations or first_under_budget):
            est = validate(learner, model, val, val_episodes, params, ctx, seed=cfg.seed,
                           method=r2d2_method(params) if cfg.algorithm == "r2d2" else None)
            record |= {"val_miou": est.mean, "val_ci95": est.half_width, "val_tasks": est.n}
            run.log(f"iteration {it}: validation mIoU {est} over {est.n} held-out tasks")
        run.metric(record)
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.3f}", eps=f"{epsilon:.2g}",
                             **({"val": f"{100 * record['val_miou']:.1f}"} if "val_miou" in record else {}))
        if it % cfg.checkpoint_interval == 0 or it == cfg.iterations:
            _checkpoint(ckpt_path, model, outer, it, cfg, ctx,
                        extra={"requested_iterations": requested, "commands": commands})
        curves.scalars(it, {"train/loss": loss, "train/epsilon": epsilon, "val/miou": record.get("val_miou"),
                            "train/step_seconds": time.monotonic() - step_started})
        if budget is not None:
            if "val_miou" in record or it % cfg.checkpoint_interval == 0:  # (checkpoint + validation at the end)
                budget.record_final_cost(time.monotonic() - extra_started)  # what the last iteration will add
            fitted = int(ctx.broadcast(float(budget.fit(it, cfg.iterations, limit, start))))  # rank 0 decides
            if fitted != cfg.iterations:
                cfg = _refit(cfg, fitted, budget, run, progress)
                meta.iterations = cfg.iterations  # epsilon decays over the iterations the run really does
    progress.close()
    curves.close()

    out = run.file(MODEL)
    if ctx.is_main:
        save_initialization(out, model, {"algorithm": cfg.algorithm, "iterations": cfg.iterations, "data": cfg.data,
                                         "size": cfg.size})
        write_run_card(run.path, model, size=cfg.size, update_params=cfg.update_params().as_dict(),
                       source="meta-training's omega", summary=f"EfficientLab initialization meta-trained with "
                       f"{cfg.algorithm} from {cfg.init} weights.",
                       training={"algorithm": cfg.algorithm, "init": cfg.init, "data": cfg.data, "splits": cfg.splits,
                                 "iterations": cfg.iterations, "meta_batch": cfg.meta_batch, "command": commands[0],
                                 **({"resumed_with": commands[1:]} if len(commands) > 1 else {}),
                                 "meta_optimizer": f"{cfg.meta_optimizer} {cfg.meta_step:g} -> {cfg.meta_step_final:g}"})
        if cfg.algorithm == "r2d2":  # the inner loop it was trained for is the default way to adapt it
            card = read_card(run.path)
            if card is not None:
                card.adaptation = {**r2d2_method(params).as_dict(), "source": "meta-training's inner loop (R2-D2)"}
                card.save(run.path)
        run.log(f"done: {cfg.iterations} meta-iterations in {time.monotonic() - started:.0f} s; "
                f"initialization written to {out}")
    ctx.barrier()
    return out


def validate(
    learner: Learner,
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    episodes: list,
    params: UpdateParams,
    ctx: distributed.Context,
    *,
    seed: int,
    method: MethodSpec | None = None,
) -> Estimate:
    """Mean IoU of U(theta) (or of `method`) over held-out task splits (one per class) with its t interval,
    episodes sharded across ranks."""
    scores = torch.zeros(len(episodes), dtype=torch.float64, device=ctx.device)  # nccl reduces device tensors only
    for i, episode in enumerate(episodes):
        if ctx.mine(i):
            rows = run_episode(learner, model, dataset, episode, params, seed=seed, method=method)
            scores[i] = float(np.mean([r["iou"] for r in rows]))
    ctx.all_reduce_(scores)  # each episode's score comes from its one rank; the others add zero
    return t_interval(scores.tolist())


def r2d2_method(params: UpdateParams) -> MethodSpec:
    """R2-D2's inner loop as an adaptation method: the ridge probe on all features, support BatchNorm statistics."""
    return MethodSpec.of("probe", {"solver": "ridge", "l2": params.probe_l2, "stats": "support"})


def _validation_episodes(val: SegmentationDataset, cfg: MetaTrainConfig) -> list:
    rng = episode_rng(cfg.seed, 4)
    names = sorted(rng.choice(val.names, size=min(cfg.eval_tasks, len(val.names)), replace=False).tolist())
    names = [n for n in names if val.count(n) >= cfg.eval_shots + 5]
    return paper_episodes(val, names, cfg.eval_shots, splits=1, seed=cfg.seed)


def _checkpoint(path: Path, model, outer, iteration: int, cfg: MetaTrainConfig, ctx: distributed.Context,
                extra: dict | None = None) -> None:
    if ctx.is_main:
        save_checkpoint(path, {
            "format": "fewshotseg-checkpoint", "iteration": iteration, "model": model_state(model),
            "model_config": as_dict(model.config), "optimizer": outer.state_dict(),
            "rng": {"torch": torch.get_rng_state()}, "config": as_dict(cfg), **(extra or {}),
        })


def _commands(state: dict, run: RunDir) -> list[str]:
    """The command lines that ran the run so far: the checkpoint's record, else (a checkpoint written before it
    kept one) the command config.yaml records."""
    if state.get("commands"):
        return list(state["commands"])
    try:
        import yaml

        command = (yaml.safe_load(run.file(CONFIG).read_text()) or {}).get("environment", {}).get("command")
    except (OSError, ValueError, AttributeError):
        command = None
    return [shlex.join(command)] if isinstance(command, list) and command else []


def _refit(cfg: MetaTrainConfig, iterations: int, budget: Budget, run: RunDir, progress) -> MetaTrainConfig:
    """The run's new iteration count under its time budget, logged and written into its config."""
    run.log(f"time budget {budget.seconds / 60:g} min, {budget.elapsed():.0f} s used: {iterations} meta-iterations")
    progress.total = iterations
    cfg = replace(cfg, iterations=iterations)
    run.write_config(as_dict(cfg))  # the run's record holds the iterations it really runs
    return cfg
