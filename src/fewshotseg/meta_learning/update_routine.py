"""The update routine U(theta, D, omega): fine-tune an initialization on one task's few labelled images.

omega = (learning rate, steps, batch size, dropout, augmentation rate) plus the optimizer (SGD, the paper's, or
Adam), the L2 coefficient, an optional step-decay schedule and the BatchNorm policy. U never changes theta: it
copies theta into a working model in place (`Learner.start`) and adapts that; the adapted weights stay in
`learner.model` until the next task.

`Learner.adapt_steps` yields after every step, so a caller can look at the weights between steps and stop early;
early stopping on held-out IoU lives with the metrics, in evaluation/early_stopping.py.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewshotseg import errors
from fewshotseg.data.augment import augment_batch
from fewshotseg.data.tasks import TaskTensors, inner_batches, torch_generator
from fewshotseg.meta_learning import batchnorm
from fewshotseg.meta_learning.weights import copy_state_
from fewshotseg.models.losses import l2_parameters, segmentation_loss

HEAD_INITS = ("init", "probe")
OPTIMIZERS = ("sgd", "adam")  # the paper's SGD, or Adam
LR_SCHEDULES = ("fixed", "step")


class DivergedError(errors.DivergedError):
    """The adaptation loss or weights became NaN or infinite (e.g. a learning rate far too large)."""


@dataclass
class UpdateParams:
    """omega: the hyperparameters of U. Defaults are the paper's Table 3 (used for meta-training and evaluation)."""

    lr: float = 0.005
    steps: int = 5
    batch_size: int = 8
    dropout: float = 0.2
    aug_rate: float = 0.5
    optimizer: str = field(default="sgd", metadata={"choices": OPTIMIZERS})  # "sgd" (paper) or "adam"
    l2: float = 5e-4  # lambda in lambda * ||theta||^2 (paper convention; the reference's code used 2.5e-4)
    # "fixed" or "step": lr * decay_rate ** (step // decay_every) (App. E)
    lr_schedule: str = field(default="fixed", metadata={"choices": LR_SCHEDULES})
    decay_rate: float = 0.5
    decay_every: int = 5
    bn_policy: str = field(default="paper", metadata={"choices": batchnorm.POLICIES})  # see meta_learning/batchnorm.py
    # "init": start from the initialization's classifier; "probe": first set the classifier to the linear probe's
    # solution on the support pixels' decoder features (LP-FT, Kumar et al. 2022), then take the steps.
    head_init: str = field(default="init", metadata={"choices": HEAD_INITS})
    probe_l2: float = 1e-3  # the probe's L2 penalty when head_init is "probe"

    def __post_init__(self) -> None:
        batchnorm.check_policy(self.bn_policy)
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"unknown head_init {self.head_init!r}; choose one of {', '.join(HEAD_INITS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose sgd or adam")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.lr_schedule!r}; choose fixed or step")

    def lr_at(self, step: int) -> float:
        if self.lr_schedule == "step":
            return max(self.lr * self.decay_rate ** (step // self.decay_every), 1e-7)
        return self.lr

    def replace(self, **changes) -> UpdateParams:
        return UpdateParams(**{**asdict(self), **changes})

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> UpdateParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown update parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        """An update-parameters file as `tune` writes one (read back by `initializations.adapting.read_update_params`,
        which checks every value)."""
        Path(path).write_text(json.dumps({"update_params": self.as_dict()}, indent=2) + "\n")


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (model output, masks (B, H, W)) -> scalar loss


class Learner:
    """A working copy of the network that U adapts; reused across tasks.

    `model` is any segmenter `nn.Module` that maps images (B, 3, H, W) to two-class logits (B, 2, H, W); `loss`
    turns its output and the masks into the scalar that U minimises (default: the EfficientLab loss). A model with
    a `set_dropout(rate)` method gets the update parameters' dropout rate.
    """

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu", *, loss: Loss = segmentation_loss):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.loss = loss
        decay = l2_parameters(self.model)
        decay_ids = {id(p) for p in decay}
        self._groups = [decay, [p for p in self.model.parameters() if id(p) not in decay_ids]]
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self.params = UpdateParams()
        self.last_loss = math.nan
        # The last `predict` call's images and foreground probabilities (B, H, W), for overlays; None before one.
        self.last_predictions: tuple[torch.Tensor, torch.Tensor] | None = None
        self._mode: str | None = None
        self._support: torch.Tensor | None = None  # the task's support images, for the support BN policy
        self._stale = False  # the weights moved since the support statistics were computed

    def start(self, init: nn.Module, params: UpdateParams) -> None:
        """Load theta (weights and BN statistics) in place and reset the optimizer for a new task."""
        copy_state_(self.model, init)
        self.params = params
        self._mode = None
        set_dropout = getattr(self.model, "set_dropout", None)
        if callable(set_dropout):
            set_dropout(params.dropout)
        opt = self._optimizers.get(params.optimizer)
        if opt is None:
            # L2 on every non-BN weight as weight decay 2*lambda: the gradient of lambda*||w||^2 is 2*lambda*w,
            # so this equals adding the L2 term to the loss (tests check it), without computing it.
            groups: list[dict[str, Any]] = [{"params": self._groups[0]},
                                            {"params": self._groups[1], "weight_decay": 0.0}]
            cls = torch.optim.SGD if params.optimizer == "sgd" else torch.optim.Adam
            opt = cls(groups, lr=params.lr)
            self._optimizers[params.optimizer] = opt
        opt.state.clear()  # Adam's moments never carry over from one task to the next
        opt.param_groups[0]["weight_decay"] = 2 * params.l2
        self.optimizer = opt

    def step(self, images: torch.Tensor, masks: torch.Tensor, lr: float) -> float:
        """One optimizer step on a mini-batch; raises DivergedError on a non-finite loss."""
        if self._mode != "adapt":  # walking every module costs ~0.5 ms: switch only when predicting intervened
            batchnorm.adaptation_mode(self.model, self.params.bn_policy)
            self._mode = "adapt"
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = images.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        loss = self.loss(self.model(images), masks)
        if not torch.isfinite(loss):
            raise DivergedError(f"diverged: the adaptation loss is {loss.item()} at lr {lr:g}; use a smaller "
                                "learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._stale = True
        self.last_loss = loss.item()
        return self.last_loss

    def adapt(
        self,
        init: nn.Module,
        task: TaskTensors,
        params: UpdateParams,
        rng: np.random.Generator,
        *,
        steps: int | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        """U: `steps` (default params.steps) SGD/Adam steps on augmented mini-batches cycling through `task`."""
        for step in self.adapt_steps(init, task, params, rng, steps=steps):
            if on_step is not None:
                on_step(step)

    def adapt_steps(
        self,
        init: nn.Module,
        task: TaskTensors,
        params: UpdateParams,
        rng: np.random.Generator,
        *,
        steps: int | None = None,
    ) -> Iterator[int]:
        """`adapt`, yielding the number of steps taken after each one; stop iterating to stop adapting.

        Dropout and drop-path masks come from torch's global generator, seeded from `rng` for the task inside a
        forked RNG state: results are reproducible per task, and the caller's global RNG state is left as it was.
        """
        self.start(init, params)
        self._support, self._stale = task.images, True
        if params.head_init == "probe":
            probe_head_(self.model, task.images.to(self.device), task.masks.to(self.device), params.probe_l2)
        g = torch_generator(rng)
        seed = int(rng.integers(2**62))
        n_steps = params.steps if steps is None else steps
        with self.seeded(seed):
            for t, batch in enumerate(inner_batches(rng, np.arange(len(task)), params.batch_size, n_steps)):
                x, y = augment_batch(*task_batch(task, batch), params.aug_rate, g)
                self.step(x, y, params.lr_at(t))
                if t + 1 == n_steps:  # the next step's loss would catch a blow-up; after the last one, look
                    check_finite_weights(self.model, f"after the last of {n_steps} steps at lr {params.lr_at(t):g}")
                yield t + 1

    @contextlib.contextmanager
    def seeded(self, seed: int) -> Iterator[None]:
        """Seed torch's global generator (dropout and drop-path masks) for a block of steps, and restore the
        caller's RNG state afterwards."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def refresh_statistics(self) -> None:
        """Under the support policy, set the BatchNorm statistics from the task's support images if the weights
        moved since (what `predict` does first); a no-op otherwise."""
        if self.params.bn_policy == "support" and self._stale and self._support is not None:
            batchnorm.set_statistics_(self.model, self._support.to(self.device))
            self._stale = False

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Foreground probabilities (B, H, W) with the BN policy's prediction mode.

        Under the transductive policy all images go through together (their statistics normalise each other).
        """
        self.refresh_statistics()
        batchnorm.prediction_mode(self.model, self.params.bn_policy)
        self._mode = "predict"
        if self.params.bn_policy == "transductive":
            batch_size = len(images)
        out = [
            self.model(images[i : i + batch_size].to(self.device)).softmax(dim=1)[:, 1].float().cpu()
            for i in range(0, len(images), batch_size)
        ]
        probs = torch.cat(out)
        self.last_predictions = (images, probs)
        return probs


def check_finite_weights(model: nn.Module, when: str) -> None:
    """A DivergedError when any parameter is NaN or infinite."""
    with torch.no_grad():
        finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if not finite:
        raise DivergedError(f"weights became NaN or infinite {when}")


def task_batch(task: TaskTensors, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.as_tensor(index, dtype=torch.long)
    return task.images[rows], task.masks[rows]


@torch.no_grad()
def probe_head_(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, l2: float) -> None:
    """Set a two-class EfficientLab's classifier to the linear probe on its decoder features (LP-FT's first stage).

    The probe is a class-balanced logistic regression of each stride-4 feature cell's label (its foreground fraction
    >= 0.5) on the decoder's output, with the initialization's running BatchNorm statistics and dropout off; its
    weight w and bias b become the classifier's as (+w/2, +b/2) for foreground and (-w/2, -b/2) for background, so
    the network's foreground probability softmax(logits)[1] = sigmoid(<w, x> + b) is exactly the probe's."""
    from fewshotseg.models.closed_form import (
        balanced_weights,
        flatten,
        logistic_head,
        mask_targets,
        pixel_features,
    )

    head = getattr(model, "head", None)
    conv = head[-1] if isinstance(head, nn.Sequential) else None
    if not isinstance(conv, nn.Conv2d) or conv.out_channels != 2:
        raise ValueError("head_init probe needs an EfficientLab with a two-class 1x1 classifier")
    was_training = model.training
    model.eval()
    features = pixel_features(model, images, ("decoder",), normalise=False)
    labels = (mask_targets(masks, features.shape[-2:]) >= 0.5).float().flatten()
    if labels.min() == labels.max():
        model.train(was_training)
        return  # one class of pixels only: nothing to separate; keep the initialization's classifier
    head = logistic_head(flatten(features), labels, l2, balanced_weights(labels))
    conv.weight.zero_()
    conv.weight[1, :, 0, 0] = head.weight / 2
    conv.weight[0, :, 0, 0] = -head.weight / 2
    if conv.bias is not None:
        conv.bias.copy_(torch.stack([-head.bias / 2, head.bias / 2]))
    model.train(was_training)
