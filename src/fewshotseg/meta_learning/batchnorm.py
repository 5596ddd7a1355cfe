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
def set_statistics_(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> None:
    """Set every BatchNorm's running statistics to the exact statistics of `images` (dropout off).

    One pass when the images fit one batch; otherwise the per-batch statistics are pooled exactly (means weighted by
    batch size, variances by the law of total variance), so the result does not depend on `batch_size`."""
    model.eval()
    bns = list(bn_modules(model))
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
        m.train()
    if len(images) <= batch_size:
        model(images)
    else:  # a cumulative average of per-batch means and (unbiased) variances, then corrected to the pooled ones
        sums = [(torch.zeros_like(m.running_mean), torch.zeros_like(m.running_mean)) for m in bns]
        counts = 0
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            for m in bns:
                m.reset_running_stats()
            model(chunk)
            pixels = len(chunk)
            for (s1, s2), m in zip(sums, bns, strict=True):
                s1 += m.running_mean * pixels
                s2 += (m.running_var + m.running_mean ** 2) * pixels
            counts += pixels
        for (s1, s2), m in zip(sums, bns, strict=True):
            m.running_mean.copy_(s1 / counts)
            m.running_var.copy_(s2 / counts - (s1 / counts) ** 2)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    model.eval()
