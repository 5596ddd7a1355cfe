"""BatchNorm policies: how running statistics behave while the update routine adapts and then predicts.

* ``paper`` (default; paper §4 and REFERENCE §3.6, §4): gamma and beta are meta-learned like every weight; the
  running statistics are updated by every adaptation step (train-mode batch statistics), prediction uses them in
  eval mode, and after every task they are restored with the rest of the state, so nothing leaks from one task to
  the next. During meta-training the initialization's running statistics become the mean of the tasks' adapted
  statistics (the reference instead let one global EMA drift through every inner step of every task; the mean is
  the same estimate without the dependence on task order, and it is identical across processes).
* ``transductive``: adapt as ``paper``, but predict with the statistics of the query batch itself
  (batch statistics at prediction; the query images are normalised together).
* ``frozen``: running statistics are never updated; adaptation and prediction both normalise with the
  initialization's statistics (gamma and beta are still adapted).
* ``support``: adapt as ``paper``, then set the running statistics to the exact statistics of the (unaugmented)
  support images and predict with them in eval mode: every query is normalised the same way whatever else is
  predicted with it, and one query is never normalised by itself (what `adapt` and `serve` deploy).
"""

from __future__ import annotations

import torch
from torch import nn

POLICIES = ("paper", "transductive", "frozen", "support")


def bn_modules(model: nn.Module):
    return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def adaptation_mode(model: nn.Module, policy: str) -> None:
    """Train mode (dropout on); BN normalises with batch statistics unless the policy freezes them."""
    model.train()
    if policy == "frozen":
        for m in bn_modules(model):
            m.eval()


def prediction_mode(model: nn.Module, policy: str) -> None:
    """Eval mode (dropout off); BN uses running statistics, or the query batch's own under ``transductive``."""
    model.eval()
    if policy == "transductive":
        for m in bn_modules(model):
            m.train()


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown BatchNorm policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return policy


@torch.no_grad()
def set_statistics_(model: nn.Module, images: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to the exact statistics of `images` (one pass, dropout off)."""
    model.eval()
    bns = list(bn_modules(model))
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
        m.train()
    model(images)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    model.eval()
