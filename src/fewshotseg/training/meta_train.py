"""Meta-training: one loop, read top to bottom.

    for each meta-iteration i:
        epsilon_i = linear decay from meta_step to meta_step_final
        sample meta_batch training classes            (seeded by (seed, i): identical on every rank)
        for each task k on this rank:                  (task k runs on rank k % world)
            delta_k = Reptile / FOMAML / FOMAML* difference after U      (meta_learning/meta_update.py)
        all-reduce the deltas and the adapted BN statistics
        theta.grad = -mean_k delta_k ; outer optimizer step (SGD: theta + epsilon * mean delta)
        theta's BN statistics = mean of the tasks' adapted statistics
        every eval_interval: mean IoU of U(theta) on held-out validation tasks
        every checkpoint_interval: atomic checkpoint (model, outer optimizer, RNG, iteration, config)

Every random choice of iteration i, task k comes from a generator seeded by (seed, i, k), so a run resumed from a
checkpoint, or spread over several processes, computes exactly what an uninterrupted one-process run computes.
Deltas are reduced per task slot (each rank fills its slots, zeros elsewhere) and summed in task order on every
rank, which keeps the sum bit-identical to the one-process sum.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fewshotseg.config import MetaTrainConfig, as_dict
from fewshotseg.data.dataset import SegmentationDataset
from fewshotseg.data.tasks import TaskTensors, episode_rng, sample_classes
from fewshotseg.evaluation.intervals import Estimate
from fewshotseg.evaluation.protocols import paper_episodes, run_episode
from fewshotseg.meta_learning.meta_update import check_algorithm, task_difference
from fewshotseg.meta_learning.update_routine import Learner, UpdateParams
from fewshotseg.meta_learning.weights import parameters, statistics, unflatten_into_
from fewshotseg.runs.initialization import load_initialization, model_state, save_initialization
from fewshotseg.runs.run_dir import RunDir
from fewshotseg.training import distributed
from fewshotseg.training.checkpoint import check_unchanged, resumable_state, save_checkpoint

# Changing these on --resume would silently change the run; everything else (eval cadence, threads) may change.
_FIXED_ON_RESUME = ("data", "size", "splits", "algorithm", "variant", "encoder", "meta_batch", "meta_optimizer",
                    "meta_step", "meta_step_final", "inner_lr", "inner_steps", "inner_batch", "inner_optimizer",
                    "train_shots", "val_shots", "dropout", "aug_rate", "l2", "bn_policy", "seed")


def meta_train(cfg: MetaTrainConfig, *, resume: bool = False, max_minutes: float = 0.0) -> Path:
    """Meta-train an initialization; returns the path of the exported `model.safetensors`."""
    check_algorithm(cfg.algorithm)
    ctx = distributed.setup(cfg.device, cfg.threads)
    run = RunDir(cfg.run_dir, writer=ctx.is_main)
    ckpt_path = run.file("checkpoint.pt")
    state = resumable_state(ckpt_path, resume)
    if state is not None:
        check_unchanged(cfg, state["config"], _FIXED_ON_RESUME)
        cfg = replace(cfg, iterations=state["config"]["iterations"])  # as fitted to a time budget, if it was

    from fewshotseg.data.cache import load_dataset
    from fewshotseg.data.splits import resolve_splits

    dataset = load_dataset(cfg.data, cfg.size)
    splits = resolve_splits(dataset.root, cfg.splits)
    train = dataset.subset(splits["train"])
    val = dataset.subset(splits["val"]) if splits.get("val") else None

    torch.manual_seed(cfg.seed)  # a random initialization is a function of the seed
    model, described = load_initialization(cfg.init, cfg.model_config(dropout=cfg.dropout))
    model.to(ctx.device)
    learner = Learner(copy.deepcopy(model), ctx.device)  # the working model U adapts; theta stays in `model`
    params = cfg.update_params()
    theta, stats = parameters(model), statistics(model)
    outer_cls = torch.optim.SGD if cfg.meta_optimizer == "sgd" else torch.optim.Adam
    outer = outer_cls(theta, lr=cfg.meta_step)

    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        outer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        start = state["iteration"]
        run.truncate_metrics(start)
        run.log(f"resumed from {ckpt_path} at iteration {start}")
    else:
        run.write_config(as_dict(cfg))
        run.log(f"meta-training {cfg.algorithm} from {described} on {len(train)} classes of {cfg.data} "
                f"at {cfg.size} px, {ctx.world} process(es) on {ctx.device}")

    val_episodes = _validation_episodes(val, cfg) if val is not None and cfg.eval_interval else []
    n_theta = sum(t.numel() for t in theta)
    slots = torch.zeros(cfg.meta_batch, n_theta + sum(s.numel() for s in stats) + 1, device=ctx.device)
    shots = cfg.shots()
    stats_rate = statistics_rate(cfg.bn_momentum, cfg.inner_steps, cfg.meta_batch)
    started = time.monotonic()
    marks: dict[int, float] = {}
    progress = tqdm(total=cfg.iterations, initial=start, desc=f"meta-train {cfg.algorithm}", disable=not ctx.is_main,
                    dynamic_ncols=True)
    it = start
    while it < cfg.iterations:
        frac = it / cfg.iterations
        epsilon = (1 - frac) * cfg.meta_step + frac * cfg.meta_step_final
        for group in outer.param_groups:
            group["lr"] = epsilon
        names = sample_classes(episode_rng(cfg.seed, 0, it), train.names, cfg.meta_batch)

        slots.zero_()
        for k, name in enumerate(names):
            if ctx.mine(k):
                delta = task_difference(cfg.algorithm, learner, model, TaskTensors.from_dataset(train, name), params,
                                        episode_rng(cfg.seed, 1, it, k), train_shots=shots, val_shots=cfg.val_shots)
                record_task(slots[k], delta, learner)
        ctx.all_reduce_(slots)
        loss = apply_meta_update(slots, theta, stats, outer, stats_rate)
        it += 1

        if not math.isfinite(loss):
            raise FloatingPointError(f"meta-training diverged at iteration {it} (inner loss {loss}); "
                                     "lower --inner-lr or --meta-step")
        record = {"iteration": it, "loss": loss, "meta_step": epsilon}
        if val_episodes and (it % cfg.eval_interval == 0 or it == cfg.iterations):
            est = validate(learner, model, val, val_episodes, params, ctx, seed=cfg.seed)
            record |= {"val_miou": est.mean, "val_ci95": est.half_width, "val_tasks": est.n}
            run.log(f"iteration {it}: validation mIoU {est} over {est.n} held-out tasks")
        run.metric(record)
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.3f}", eps=f"{epsilon:.2g}",
                             **({"val": f"{100 * record['val_miou']:.1f}"} if "val_miou" in record else {}))
        if max_minutes and state is None and it in (start + 5, start + 25):  # steady-state speed, after warm-up
            marks[it] = ctx.broadcast(time.monotonic() - started)
            if it == start + 25:
                cfg = _fit_budget(cfg, it, marks, max_minutes, run, progress)
        if it % cfg.checkpoint_interval == 0 or it == cfg.iterations:
            _checkpoint(ckpt_path, model, outer, it, cfg, ctx)
    progress.close()

    out = run.file("model.safetensors")
    if ctx.is_main:
        save_initialization(out, model, {"algorithm": cfg.algorithm, "iterations": cfg.iterations, "data": cfg.data,
                                         "size": cfg.size})
        run.log(f"done: {cfg.iterations} meta-iterations in {time.monotonic() - started:.0f} s; "
                f"initialization written to {out}")
    ctx.barrier()
    return out


def record_task(slot: torch.Tensor, delta: list[torch.Tensor], learner: Learner) -> None:
    """Write one task's delta, adapted BN statistics and last loss into its slot (one row of the reduce buffer)."""
    stats = statistics(learner.model)
    n_theta = sum(d.numel() for d in delta)
    with torch.no_grad():
        torch.cat([d.reshape(-1) for d in delta], out=slot[:n_theta])
        torch.cat([s.reshape(-1) for s in stats], out=slot[n_theta:-1])
        slot[-1] = learner.last_loss


@torch.no_grad()
def apply_meta_update(slots: torch.Tensor, theta: list[torch.Tensor], stats: list[torch.Tensor],
                      outer: torch.optim.Optimizer, stats_rate: float) -> float:
    """theta.grad = -mean_k delta_k, one outer-optimizer step, BN statistics toward the tasks'; returns the loss.

    The slots are summed in task order, so the sum is bit-identical however the tasks were spread over processes.
    """
    total = slots[0].clone()
    for k in range(1, len(slots)):
        total += slots[k]
    mean = total / len(slots)
    n_theta = sum(t.numel() for t in theta)
    grads = [torch.empty_like(t) for t in theta]
    unflatten_into_(-mean[:n_theta], grads)
    for t, g in zip(theta, grads, strict=True):
        t.grad = g
    outer.step()
    # The statistics move as far as one EMA through all inner steps of all tasks would (`statistics_rate`).
    new_stats = torch.cat([s.reshape(-1) for s in stats])
    new_stats += stats_rate * (mean[n_theta:-1] - new_stats)
    unflatten_into_(new_stats, stats)
    return float(mean[-1])


def validate(
    learner: Learner,
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    episodes: list,
    params: UpdateParams,
    ctx: distributed.Context,
    *,
    seed: int,
) -> Estimate:
    """Mean IoU of U(theta) over held-out task splits, episodes sharded across ranks."""
    sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # nccl reduces device tensors only
    for i, episode in enumerate(episodes):
        if ctx.mine(i):
            rows = run_episode(learner, model, dataset, episode, params, seed=seed)
            score = float(np.mean([r["iou"] for r in rows]))
            sums += torch.tensor([1.0, score, score * score], dtype=torch.float64, device=ctx.device)
    ctx.all_reduce_(sums)
    n, total, squares = sums.tolist()
    mean = total / n
    half = 1.96 * math.sqrt(max(squares / n - mean * mean, 0.0)) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, int(n))


def statistics_rate(momentum: float, steps: int, tasks: int) -> float:
    """How far theta's BN statistics move toward the tasks' mean adapted statistics per meta-iteration.

    The reference never restored running statistics during meta-training, so one EMA ran through every inner step
    of every task: K*M updates of momentum m per meta-iteration. Each task's adapted statistics moved a fraction
    1 - (1 - m)^K of the way from theta's; scaling the mean move by (1 - (1 - m)^(K*M)) / (1 - (1 - m)^K) moves theta's
    statistics as far as that EMA would, to first order, without depending on task order (so it is identical
    across processes). Without it the statistics lag the weights by ~1/(mK) iterations, which is long when the
    outer optimizer is Adam.
    """
    if momentum <= 0:
        return 0.0
    per_task = 1 - (1 - momentum) ** steps
    return (1 - (1 - momentum) ** (steps * tasks)) / per_task if per_task > 0 else 0.0


def _validation_episodes(val: SegmentationDataset, cfg: MetaTrainConfig) -> list:
    rng = episode_rng(cfg.seed, 4)
    names = sorted(rng.choice(val.names, size=min(cfg.eval_tasks, len(val.names)), replace=False).tolist())
    names = [n for n in names if val.count(n) >= cfg.eval_shots + 5]
    return paper_episodes(val, names, cfg.eval_shots, splits=1, seed=cfg.seed)


def _checkpoint(path: Path, model, outer, iteration: int, cfg: MetaTrainConfig, ctx: distributed.Context) -> None:
    if ctx.is_main:
        save_checkpoint(path, {
            "format": "fewshotseg-checkpoint", "iteration": iteration, "model": model_state(model),
            "model_config": as_dict(model.config), "optimizer": outer.state_dict(),
            "rng": {"torch": torch.get_rng_state()}, "config": as_dict(cfg),
        })


def _fit_budget(cfg, done: int, marks: dict[int, float], max_minutes: float, run: RunDir, progress) -> MetaTrainConfig:
    """Fix the number of meta-iterations so the run fits `max_minutes` (the lr schedule then decays to match),
    from the speed between the two marked iterations (the first iterations include warm-up)."""
    (i0, t0), (i1, t1) = sorted(marks.items())
    per_iteration = (t1 - t0) / (i1 - i0)
    budget = max(done + 1, done + int((max_minutes * 60 - t1) / per_iteration))
    iterations = min(cfg.iterations, budget)
    if iterations == cfg.iterations:
        return cfg
    run.log(f"time budget {max_minutes:g} min at {per_iteration:.2f} s/iteration: {iterations} meta-iterations")
    progress.total = iterations
    cfg = replace(cfg, iterations=iterations)
    run.write_config(as_dict(cfg))  # the run's record holds the iterations it really runs
    return cfg
