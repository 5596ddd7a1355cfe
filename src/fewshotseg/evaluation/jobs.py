"""What the episode jobs of evaluate, tune, fp-k and analyze-weights ask a worker (runs/workers.py) to keep."""

from __future__ import annotations

import copy

from fewshotseg.data.dataset import SegmentationDataset
from fewshotseg.meta_learning.update_routine import Learner
from fewshotseg.runs.workers import WorkerState


def learner(state: WorkerState, path: str) -> Learner:
    """A working model with the architecture of the initialization `path` (shared by inits of one architecture)."""
    init = state.init(path)
    return state.cached(("learner", repr(init.config)), lambda: Learner(copy.deepcopy(init), state.device))


def dataset(state: WorkerState, spec: str | tuple, size: int) -> SegmentationDataset:
    """The dataset `spec` at `size` px, loaded once per worker. `spec` is a `--data` value, or
    (data, split, splits, fold) for one split of it (`cache.load_split`; fold None without folds)."""
    from fewshotseg.data.cache import load_dataset, load_split

    if isinstance(spec, tuple):
        data, split, splits, fold = spec
        return state.cached(("split", spec, size),
                            lambda: load_split(data, size, split, splits=splits, fold=fold, progress=False))
    return state.cached(("dataset", spec, size), lambda: load_dataset(spec, size, progress=False))
