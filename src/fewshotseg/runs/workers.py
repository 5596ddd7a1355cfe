"""Episodes in parallel: a pool of single-threaded processes, each holding a working model and the datasets.

On a CPU, two single-threaded processes with one task each run 1.4-2x faster than one two-threaded process, so
evaluation, UHO and FP-k hand their episodes to a `Pool`. A job is a top-level function called as
`fn(state, *args)`, where `state` is the worker's `WorkerState`: whatever a job asks it to keep (`state.cached`:
initializations, datasets, working models; see evaluation/jobs.py) is loaded once per worker. With
`workers <= 1` the same functions run inline, in this process.

Every episode seeds its own generators from its identity (see data/tasks.py), so results do not depend on which
worker ran an episode or in which order.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class WorkerSpec:
    device: str = "cpu"
    threads: int = 1


class WorkerState:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.device = torch.device(spec.device)
        self._cache: dict[Any, Any] = {}

    def cached(self, key: Any, make: Callable[[], T]) -> T:
        """The object stored under `key`, made by `make()` the first time this worker is asked for it."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


_STATE: WorkerState | None = None


def _start_worker(spec: WorkerSpec) -> None:
    global _STATE
    torch.set_num_threads(spec.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _STATE = WorkerState(spec)


def _call(job: tuple[Callable, tuple]) -> Any:
    fn, args = job
    return fn(_STATE, *args)


class Pool:
    def __init__(self, workers: int = 1, device: str = "cpu"):
        self.workers = workers if device == "cpu" else 1  # one GPU: one process
        if self.workers > 1:
            spec = WorkerSpec(device=device, threads=max(1, (os.cpu_count() or 1) // self.workers))
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=mp.get_context("spawn"), initializer=_start_worker, initargs=(spec,)
            )
        else:
            self._state = WorkerState(WorkerSpec(device=device, threads=torch.get_num_threads()))

    def map(self, fn: Callable, jobs: Iterable[tuple]) -> Iterator[Any]:
        """fn(state, *args) for every args tuple in `jobs`, results in order."""
        if self.workers > 1:
            return self._executor.map(_call, [(fn, args) for args in jobs], chunksize=1)
        return (fn(self._state, *args) for args in jobs)

    def close(self) -> None:
        if self.workers > 1:
            self._executor.shutdown()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0
