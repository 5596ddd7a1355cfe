"""One meta-learning step on a list of tasks, without a run folder: `MetaLearner(model, ...).meta_step(tasks)`.

    epsilon_i = (1 - i/N) * meta_step + (i/N) * meta_step_final     linear decay over N meta-iterations
    delta_k   = Reptile / FOMAML / FOMAML* difference of task k      (meta_learning/meta_update.py)
    theta.grad = -mean_k delta_k ; one outer-optimizer step with learning rate epsilon_i
    theta's BN statistics += rate * (mean_k adapted statistics_k - theta's)    (rate: `statistics_rate`)

With SGD the step is theta + epsilon_i * mean_k delta_k (Reptile's interpolation); Adam uses the same
pseudo-gradient. `training/meta_train.py` runs the same two halves (`record_task` per task, `apply` per
iteration) with the tasks spread over processes and the slots summed by one all-reduce in between.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fewshotseg.data.tasks import TaskTensors
from fewshotseg.meta_learning.meta_update import check_algorithm, task_difference
from fewshotseg.meta_learning.update_routine import Learner, Loss, UpdateParams
from fewshotseg.meta_learning.weights import parameters, statistics, unflatten_into_
from fewshotseg.models.losses import segmentation_loss

OUTER_OPTIMIZERS = ("sgd", "adam")


def meta_step_size(iteration: int, iterations: int | None, start: float, final: float) -> float:
    """epsilon at meta-iteration `iteration` (0-based) of `iterations`: linear from `start` to `final`.
    Without a number of iterations the step size stays `start`."""
    if not iterations:
        return start
    frac = iteration / iterations
    return (1 - frac) * start + frac * final


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


class MetaLearner:
    """Meta-learns the initialization `model` (updated in place) with Reptile, FOMAML or FOMAML*.

    Args:
        model: theta, any segmenter `nn.Module` (images (B, 3, H, W) -> logits (B, 2, H, W)).
        algorithm: "reptile", "fomaml" or "fomaml-star".
        params: the update routine U's hyperparameters (inner learning rate, steps, batch, ...).
        meta_optimizer: "sgd" (paper) or "adam", applied to the pseudo-gradient -mean delta.
        meta_step, meta_step_final: epsilon at the first iteration and, with `iterations`, at the last.
        iterations: the number of meta-iterations epsilon decays over (None: constant epsilon).
        train_shots, val_shots: Reptile's D, or FOMAML's D^tr + D^val pool and its |D^val|.
        bn_momentum: the BN momentum of the inner steps, which sets how far theta's statistics move
            (`statistics_rate`); None: read it from `model.config.bn_momentum` if there is one, else 0.1.
        loss: U's loss hook, (model output, masks) -> scalar (default: the EfficientLab loss).
    """

    def __init__(
        self,
        model: nn.Module,
        algorithm: str = "fomaml-star",
        params: UpdateParams | None = None,
        *,
        meta_optimizer: str = "sgd",
        meta_step: float = 0.1,
        meta_step_final: float | None = None,
        iterations: int | None = None,
        train_shots: int | None = None,
        val_shots: int = 5,
        bn_momentum: float | None = None,
        loss: Loss = segmentation_loss,
        device: torch.device | str | None = None,
    ):
        if meta_optimizer not in OUTER_OPTIMIZERS:
            raise ValueError(f"unknown meta optimizer {meta_optimizer!r}; choose one of {', '.join(OUTER_OPTIMIZERS)}")
        self.algorithm = check_algorithm(algorithm)
        self.params = params or UpdateParams()
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.learner = Learner(copy.deepcopy(model), self.device, loss=loss)  # U's working model
        self.meta_step_start = meta_step
        self.meta_step_final = meta_step if meta_step_final is None else meta_step_final
        self.iterations = iterations
        self.train_shots = train_shots if train_shots else (5 if algorithm == "reptile" else 10)
        self.val_shots = val_shots
        if bn_momentum is None:
            bn_momentum = getattr(getattr(model, "config", None), "bn_momentum", 0.1)
        self.bn_momentum = float(bn_momentum)
        self.theta, self.stats = parameters(model), statistics(model)
        outer_cls = torch.optim.SGD if meta_optimizer == "sgd" else torch.optim.Adam
        self.outer = outer_cls(self.theta, lr=meta_step)
        self.iteration = 0  # meta-iterations applied so far

    @property
    def slot_size(self) -> int:
        """Length of one task's row in the reduce buffer: delta, adapted BN statistics, last inner loss."""
        return sum(t.numel() for t in self.theta) + sum(s.numel() for s in self.stats) + 1

    def step_size(self, iteration: int | None = None) -> float:
        """epsilon at `iteration` (default: the next one)."""
        i = self.iteration if iteration is None else iteration
        return meta_step_size(i, self.iterations, self.meta_step_start, self.meta_step_final)

    def record_task(self, slot: torch.Tensor, task: TaskTensors, rng: np.random.Generator) -> None:
        """Adapt to one task; write its delta, adapted BN statistics and last inner loss into `slot` (one row)."""
        delta = task_difference(self.algorithm, self.learner, self.model, task, self.params, rng,
                                train_shots=self.train_shots, val_shots=self.val_shots)
        stats = statistics(self.learner.model)
        n_theta = sum(d.numel() for d in delta)
        with torch.no_grad():
            torch.cat([d.reshape(-1) for d in delta], out=slot[:n_theta])
            if stats:
                torch.cat([s.reshape(-1) for s in stats], out=slot[n_theta:-1])
            slot[-1] = self.learner.last_loss

    @torch.no_grad()
    def apply(self, slots: torch.Tensor) -> float:
        """theta.grad = -mean_k delta_k, one outer step with epsilon of this iteration, BN statistics toward the
        tasks'; returns the mean last inner loss. Slots are summed in task order (bit-identical however the tasks
        were spread over processes)."""
        total = slots[0].clone()
        for k in range(1, len(slots)):
            total += slots[k]
        mean = total / len(slots)
        n_theta = sum(t.numel() for t in self.theta)
        grads = [torch.empty_like(t) for t in self.theta]
        unflatten_into_(-mean[:n_theta], grads)
        for t, g in zip(self.theta, grads, strict=True):
            t.grad = g
        for group in self.outer.param_groups:
            group["lr"] = self.step_size()
        self.outer.step()
        if self.stats:
            rate = statistics_rate(self.bn_momentum, self.params.steps, len(slots))
            new_stats = torch.cat([s.reshape(-1) for s in self.stats])
            new_stats += rate * (mean[n_theta:-1] - new_stats)
            unflatten_into_(new_stats, self.stats)
        self.iteration += 1
        return float(mean[-1])

    def meta_step(self, tasks: Sequence[TaskTensors], rngs: Sequence[np.random.Generator] | int | None = None) -> float:
        """One meta-iteration on `tasks` in this process; theta (`self.model`) is updated in place.

        `rngs`: one generator per task, or a seed (task k draws from default_rng((seed, iteration, k))); None uses
        seed 0. Returns the mean last inner loss over the tasks.
        """
        if not tasks:
            raise ValueError("meta_step needs at least one task")
        if rngs is None or isinstance(rngs, int):
            seed = rngs or 0
            rngs = [np.random.default_rng((seed, self.iteration, k)) for k in range(len(tasks))]
        if len(rngs) != len(tasks):
            raise ValueError(f"meta_step got {len(tasks)} tasks but {len(rngs)} random generators")
        slots = torch.zeros(len(tasks), self.slot_size, device=self.device)
        for k, (task, rng) in enumerate(zip(tasks, rngs, strict=True)):
            self.record_task(slots[k], task, rng)
        return self.apply(slots)
