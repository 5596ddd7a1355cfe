"""The joint-trained baseline (paper §5.4): every training class plus background as one segmentation problem.

    for each step: a shuffled batch of (image, mask) pairs from every training class; labels 0 = background,
                   1..C = the pair's class; loss = CE - ln(dice over all C+1 channels) + L2 (the EfficientLab loss)
                   lr decays linearly from `lr` to `lr_final` over all steps (paper: 200 epochs, batch 8, 0.005)

The result is used as an initialization with a fresh two-class head (initializations/weights.py). Under torchrun
each rank computes an equal slice of every batch and DistributedDataParallel averages the gradients. The batches
are the same as in one process, but a multi-process run is not the same computation: BatchNorm normalises each
slice with its own statistics, each rank draws its slice's augmentation (and dropout masks) from a generator seeded
by (seed, step, rank), and the logged loss and IoU are rank 0's slice. Runs are reproducible for a given number of
processes, not across process counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm import tqdm

from fewshotseg.config import as_dict, option
from fewshotseg.data.augment import augment_batch
from fewshotseg.data.dataset import IGNORE
from fewshotseg.data.tasks import TaskTensors, episode_rng, torch_generator
from fewshotseg.errors import DivergedError, RunFolderError
from fewshotseg.initializations.pretrained import adopt_init_architecture, write_run_card
from fewshotseg.initializations.weights import load_initialization, model_state, save_initialization
from fewshotseg.meta_learning.update_routine import OPTIMIZERS
from fewshotseg.models.efficientlab import ModelFields
from fewshotseg.models.losses import l2_parameters, segmentation_loss
from fewshotseg.runs.curves import Curves
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
class JointTrainConfig(ModelFields):
    data: str = option("", "dataset folder in the FSS-1000 layout", required=True)
    run_dir: str = option("", "run folder", required=True)
    splits: str = option("auto", "class split scheme (see meta-train)")
    fold: int = option(-1, "PASCAL-5i / COCO-20i fold (0-3): train on the other classes; -1 for other datasets")
    size: int = option(224, "square image size in pixels (paper: 224)")
    init: str = option("random", "starting weights: random, imagenet or a checkpoint")
    epochs: float = option(200, "passes over every training pair (paper: 200)")
    batch_size: int = option(8, "batch size (paper: 8)")
    lr: float = option(0.005, "initial SGD learning rate, decayed linearly (paper: 0.005)")
    lr_final: float = option(5e-7, "final learning rate (the reference: 5e-7)")
    optimizer: str = option("sgd", "sgd (paper) or adam", choices=OPTIMIZERS)
    dropout: float = option(0.2, "final-layer dropout (paper: 0.2)")
    aug_rate: float = option(0.5, "probability that an example is augmented")
    l2: float = option(5e-4, "L2 coefficient lambda (paper: 5e-4)")
    seed: int = option(0, "seed of every random choice")
    max_minutes: float = option(0.0, "stop after this wall time, with the lr schedule compressed to fit (0: off)")
    checkpoint_interval: int = option(500, "optimizer steps between checkpoints")
    threads: int = option(0, "torch threads per process (0: cores / processes)")
    device: str = option("auto", "cpu, cuda or auto")
    # Settings a run folder may be continued with other values of (a resumed run keeps its own epochs and budget).
    FREE: ClassVar[tuple[str, ...]] = ("epochs", "max_minutes", "checkpoint_interval")


def joint_train(cfg: JointTrainConfig, *, resume: bool = False, overwrite: bool = False, started: float | None = None,
                given: frozenset[str] = frozenset()) -> Path:
    """Train the joint baseline; returns the path of the exported weights. `cfg.max_minutes` counts from `started`
    (a `time.monotonic()` value; the call when not given). The run folder is held and checked as meta-training's
    (`overwrite`, `resume`: see `meta_train`). A resumed run keeps its own epochs and time budget: one of them in
    `given` (the settings the user gave) with another value is refused, as is an edited config.yaml."""
    cfg = adopt_init_architecture(cfg)
    with claimed(cfg.run_dir, "joint-train", cfg, free=cfg.FREE, overwrite=overwrite, resume=resume):
        return _joint_train(cfg, resume=resume, started=started, given=given)


def _joint_train(cfg: JointTrainConfig, *, resume: bool, started: float | None, given: frozenset[str]) -> Path:
    budget = Budget(cfg.max_minutes, started=started) if cfg.max_minutes and not resume else None
    ctx = distributed.setup(cfg.device, cfg.threads)
    run = RunDir(cfg.run_dir, writer=ctx.is_main)
    ckpt_path = run.file(CHECKPOINT)
    state = resumable_state(ckpt_path, resume)
    if state is not None:
        fixed = ("data", "size", "splits", "fold", "variant", "encoder", "batch_size", "lr", "lr_final", "optimizer",
                 "dropout", "aug_rate", "l2", "seed")
        check_unchanged(cfg, state["config"], fixed)
        # under a time budget the epochs are the fitted ones (config.yaml holds the latest fit), not the asked-for
        own = ("max_minutes",) if state["config"].get("max_minutes") else ("epochs", "max_minutes")
        check_config_file(run.file(CONFIG), state, (*fixed, *own))
        changed = [k for k in own if k in given and getattr(cfg, k) != state["config"][k]]
        if changed:
            shown = ", ".join(f"--{k.replace('_', '-')} {getattr(cfg, k):g} (the run's: {state['config'][k]:g})"
                              for k in changed)
            raise RunFolderError(f"{shown} with --resume: a resumed joint training finishes its own schedule (its "
                                 "learning rate decays over the steps it was started with); resume without "
                                 f"{', '.join('--' + k.replace('_', '-') for k in changed)}, or start a new run in "
                                 "another --run-dir")
        cfg = replace(cfg, **{k: state["config"][k] for k in ("epochs", "max_minutes")})

    train, _ = load_train_val(cfg.data, cfg.size, cfg.splits, cfg.fold, val=False)
    index = np.concatenate([train.indices(name) for name in train.names])
    labels = np.concatenate([np.full(train.count(name), c + 1) for c, name in enumerate(train.names)])

    torch.manual_seed(cfg.seed)
    model, described = load_initialization(cfg.init, cfg.model_config(dropout=cfg.dropout),
                                           num_classes=len(train.names) + 1)
    model.to(ctx.device)
    decay = l2_parameters(model)
    decay_ids = {id(p) for p in decay}
    groups = [{"params": decay, "weight_decay": 2 * cfg.l2},  # = lambda * ||w||^2 in the loss
              {"params": [p for p in model.parameters() if id(p) not in decay_ids], "weight_decay": 0.0}]
    optimizer = (torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.Adam)(groups, lr=cfg.lr)
    net = model
    if ctx.world > 1:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    steps_per_epoch = max(1, len(index) // cfg.batch_size)
    total = max(1, int(cfg.epochs * steps_per_epoch))
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, total = state["step"], state["total_steps"]
        run.truncate_metrics(start)
        run.log(f"resumed from {ckpt_path} at step {start}")
    else:
        run.write_config(as_dict(cfg))
        run.log(f"joint training from {described}: {len(train.names)} classes + background, {len(index)} pairs, "
                f"{total} steps of batch {cfg.batch_size} ({cfg.epochs:g} epochs), {ctx.world} process(es)")

    per_rank = cfg.batch_size // ctx.world
    if per_rank * ctx.world != cfg.batch_size:
        raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {ctx.world} processes")
    started = time.monotonic()
    limit = total
    curves = Curves(run.path, enabled=ctx.is_main, resume_from=start if state is not None else None)
    progress = tqdm(total=total, initial=start, desc="joint-train", disable=not ctx.is_main, dynamic_ncols=True)
    step = start
    while step < total:
        step_started = time.monotonic()
        epoch, within = divmod(step, steps_per_epoch)
        order = episode_rng(cfg.seed, 6, epoch).permutation(len(index))
        batch = order[within * cfg.batch_size : (within + 1) * cfg.batch_size]
        mine = batch[ctx.rank * per_rank : (ctx.rank + 1) * per_rank]
        rng = episode_rng(cfg.seed, 7, step, ctx.rank)
        torch.manual_seed(int(rng.integers(2**62)))
        tensors = TaskTensors.from_arrays(train.images[index[mine]], train.masks[index[mine]])
        # class ids; IGNORE (PASCAL's boundaries) stays IGNORE
        x, y = tensors.images, torch.where(tensors.masks == IGNORE, IGNORE,
                                           tensors.masks * torch.from_numpy(labels[mine])[:, None, None])
        x, y = augment_batch(x, y, cfg.aug_rate, torch_generator(rng))
        lr = cfg.lr + (cfg.lr_final - cfg.lr) * step / total
        for group in optimizer.param_groups:
            group["lr"] = lr
        net.train()
        loss = segmentation_loss(net(x.to(ctx.device)), y.to(ctx.device))
        if not torch.isfinite(loss):
            raise DivergedError(f"joint training diverged at step {step} (loss {loss.item()}); lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        extra_started = time.monotonic()
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2g}")
        if step % 10 == 0 or step == total:
            run.metric({"iteration": step, "loss": loss.item(), "lr": lr, "epoch": step / steps_per_epoch})
        if step % cfg.checkpoint_interval == 0 or step == total:
            if ctx.is_main:
                save_checkpoint(ckpt_path, {
                    "format": "fewshotseg-checkpoint", "step": step, "iteration": step, "total_steps": total,
                    "model": model_state(model), "model_config": as_dict(model.config),
                    "optimizer": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()},
                    "config": as_dict(cfg), "classes": train.names,
                })
        curves.scalars(step, {"train/loss": loss.item(), "train/lr": lr,
                              "train/step_seconds": time.monotonic() - step_started})
        if budget is not None:
            if step % cfg.checkpoint_interval == 0:
                budget.record_final_cost(time.monotonic() - extra_started)
            fitted = int(ctx.broadcast(float(budget.fit(step, total, limit, start))))  # rank 0 decides
            if fitted != total:
                run.log(f"time budget {cfg.max_minutes:g} min, {budget.elapsed():.0f} s used: {fitted} steps "
                        f"({fitted / steps_per_epoch:.2f} epochs)")
                total = progress.total = fitted
                cfg = replace(cfg, epochs=round(total / steps_per_epoch, 4))
                run.write_config(as_dict(cfg))  # the run's record holds the epochs it really runs
    progress.close()
    curves.close()
    out = run.file(MODEL)
    if ctx.is_main:
        save_initialization(out, model, {"joint_trained_classes": len(train.names), "steps": total,
                                         "epochs": total / steps_per_epoch, "data": cfg.data, "size": cfg.size})
        write_run_card(run.path, model, size=cfg.size, update_params={},
                       source="paper Table 3 (joint training has no update routine of its own; tune sets one)",
                       summary=f"Joint-trained baseline: all {len(train.names)} training classes plus background as "
                       "one multi-class problem; adapted with a fresh two-class head.",
                       training={"algorithm": "joint", "init": cfg.init, "data": cfg.data, "splits": cfg.splits,
                                 "steps": total, "epochs": round(total / steps_per_epoch, 4)})
        run.log(f"done: {total} steps ({total / steps_per_epoch:.2f} epochs) in {time.monotonic() - started:.0f} s; "
                f"initialization written to {out}")
    distributed.Context.barrier(ctx)
    return out
