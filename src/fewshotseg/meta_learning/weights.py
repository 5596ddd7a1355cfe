"""Weight arithmetic on whole models: in-place copies, differences and accumulations, all with foreach kernels.

The initialization theta lives in one module; the update routine adapts a second, working module of the same
architecture. Copying theta into the working module in place costs ~1 ms where a deepcopy plus a new optimizer
per task cost ~25 ms.
"""

from __future__ import annotations

import torch
from torch import nn


def parameters(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters()]


def statistics(model: nn.Module) -> list[torch.Tensor]:
    """BN running means and variances: the float state that is not a parameter (batch counters excluded)."""
    stats: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            stats += [t for t in (module.running_mean, module.running_var) if t is not None]
    return stats


def state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Everything an initialization is: parameters, then BN statistics."""
    return parameters(model) + statistics(model)


@torch.no_grad()
def copy_state_(dst: nn.Module, src: nn.Module) -> None:
    """dst <- src for parameters and BN statistics, in place (no new tensors, optimizer stays valid)."""
    torch._foreach_copy_(state_tensors(dst), state_tensors(src))


@torch.no_grad()
def snapshot(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


@torch.no_grad()
def unflatten_into_(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
