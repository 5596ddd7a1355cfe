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
"""

from __future__ import annotations

from torch import nn

POLICIES = ("paper", "transductive", "frozen")


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
