"""torch.distributed for meta-training and joint training: launched by torchrun, gloo on CPU, nccl on GPU.

Each meta-batch's tasks are sharded across ranks by position (task k runs on rank k % world); the per-task
differences and BN statistics are summed with one all-reduce, so every rank applies the same meta-update and holds
identical parameters. Without torchrun (no WORLD_SIZE in the environment) everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fewshotseg.runs.device import choose_device


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, k: int) -> bool:
        return k % self.world == self.rank

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast(self, value: float) -> float:
        """Rank 0's value on every rank (decisions that must agree, e.g. a time budget)."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup(device: str = "auto", threads: int = 0) -> Context:
    """Join the process group when launched by torchrun; set threads so processes do not oversubscribe cores."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_world))
    dev = choose_device(device)
    if world == 1:
        return Context(device=dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(rank=dist.get_rank(), world=dist.get_world_size(), device=dev)

