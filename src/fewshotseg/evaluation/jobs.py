"""What the episode jobs of evaluate, tune, fp-k and analyze-weights ask a worker (runs/workers.py) to keep."""

from __future__ import annotations

import copy
import os

from fewshotseg.data.dataset import SegmentationDataset
from fewshotseg.initializations.weights import load_initialization
from fewshotseg.meta_learning.update_routine import Learner
from fewshotseg.models.efficientlab import EfficientLab
from fewshotseg.runs.workers import WorkerState


def init(state: WorkerState, path: str) -> EfficientLab:
    """An initialization file (safetensors) on the worker's device, loaded once (again if the file changed)."""
    return state.cached(("init", f"{path}@{os.stat(path).st_mtime_ns}"),
                        lambda: load_initialization(path, None)[0].to(state.device))


def learner(state: WorkerState, path: str) -> Learner:
    """A working model with the architecture of the initialization `path` (shared by inits of one architecture)."""
    model = init(state, path)
    return state.cached(("learner", repr(model.config)), lambda: Learner(copy.deepcopy(model), state.device))


def dataset(state: WorkerState, spec: str | tuple, size: int) -> SegmentationDataset:
    """The dataset `spec` at `size` px, loaded once per worker. `spec` is a `--data` value, or
    (data, split, splits, fold) for one split of it (`cache.load_split`; fold None without folds)."""
    from fewshotseg.data.cache import load_dataset, load_split

    if isinstance(spec, tuple):
        data, split, splits, fold = spec
        return state.cached(("split", spec, size),
                            lambda: load_split(data, size, split, splits=splits, fold=fold, progress=False))
    return state.cached(("dataset", spec, size), lambda: load_dataset(spec, size, progress=False))
