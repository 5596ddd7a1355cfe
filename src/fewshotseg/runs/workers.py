"""Episodes in parallel: a pool of single-threaded processes, each holding a working model and the datasets.

On a CPU, two single-threaded processes with one task each run 1.4-2x faster than one two-threaded process, so
evaluation, UHO and FP-k hand their episodes to a `Pool`. A job is a top-level function called as
`fn(state, *args)`, where `state` is the worker's `WorkerState` (initializations and datasets are loaded once per
worker and cached). With `workers <= 1` the same functions run inline, in this process.

Every episode seeds its own generators from its identity (see data/tasks.py), so results do not depend on which
worker ran an episode or in which order.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from fewshotseg.data.dataset import SegmentationDataset
from fewshotseg.meta_learning.update_routine import Learner
from fewshotseg.models.efficientlab import EfficientLab


@dataclass(frozen=True)
class WorkerSpec:
    device: str = "cpu"
    threads: int = 1


class WorkerState:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.device = torch.device(spec.device)
        self._inits: dict[str, EfficientLab] = {}
        self._learners: dict[str, Learner] = {}
        self._datasets: dict[tuple[str, int], SegmentationDataset] = {}

    def init(self, path: str) -> EfficientLab:
        """An initialization file (safetensors), loaded once (again if the file changed)."""
        key = f"{path}@{os.stat(path).st_mtime_ns}"
        if key not in self._inits:
            from fewshotseg.training.initialization import load_initialization

            from_file, _ = load_initialization(path, None)
            self._inits[key] = from_file.to(self.device)
        return self._inits[key]

    def learner(self, path: str) -> Learner:
        """A working model with the architecture of `path` (shared by inits of one architecture)."""
        init = self.init(path)
        key = repr(init.config)
        if key not in self._learners:
            self._learners[key] = Learner(copy.deepcopy(init), self.device)
        return self._learners[key]

    def dataset(self, spec: str, size: int, names: tuple[str, ...] | None = None) -> SegmentationDataset:
        if (spec, size) not in self._datasets:
            from fewshotseg.data.cache import load_dataset

            self._datasets[(spec, size)] = load_dataset(spec, size, progress=False)
        ds = self._datasets[(spec, size)]
        return ds.subset(list(names)) if names else ds


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
