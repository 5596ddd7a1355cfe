"""fewshotseg: meta-learned initializations for few-shot image segmentation.

The public API, importable from the package root (each name is imported on first use, so `import fewshotseg`
stays fast):

* models: `ModelConfig`, `VARIANTS`, `build_model` (EfficientLab variants), `EfficientLab`
* the update routine U on task tensors: `UpdateParams`, `Learner` (any segmenter `nn.Module`, with a loss hook)
* meta-learning without a run folder: `MetaLearner(model, "reptile" | "fomaml" | "fomaml-star").meta_step(tasks)`
* datasets and task samplers: `load_dataset`, `SegmentationDataset`, `TaskTensors`, `sample_classes`,
  `paper_episodes`, `Episode`, `make_synthetic`, `SyntheticSpec`
* evaluation: `evaluate_initialization` returning an `EvaluationResult` of `ClassResult`s
* initialization files: `save_initialization`, `read_initialization`, `load_initialization`
* for practitioners: `FewShotSegmenter` (`from_pretrained("general")`, `fit`, `predict`, `save_pretrained`),
  `Prediction`, and the initialization card `Card`; the corpus builder `make_corpus`, `CorpusSpec`
* several classes at once: `MultiClassSegmenter` (`fit(images, masks, classes)`, `predict` -> `MultiClassPrediction`:
  per-class probabilities, an indexed label map and per-class masks)
* adaptation methods: `MethodSpec` (`finetune`, `probe`, `prototype`, `rf`) and `make_adapter`

Type checkers and IDEs see every name through the `TYPE_CHECKING` imports below, so `from fewshotseg import
FewShotSegmenter` is typed (a test runs mypy on a user's script).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy `__getattr__` returns, for mypy, pyright and IDEs; never run
    from fewshotseg.adaptation import MethodSpec, make_adapter
    from fewshotseg.data.cache import load_dataset
    from fewshotseg.data.corpus import CorpusSpec, make_corpus
    from fewshotseg.data.dataset import SegmentationDataset
    from fewshotseg.data.synthetic import SyntheticSpec, make_synthetic
    from fewshotseg.data.tasks import TaskTensors, sample_classes
    from fewshotseg.evaluation.protocols import Episode, paper_episodes
    from fewshotseg.evaluation.results import ClassResult, EvaluationResult, evaluate_initialization
    from fewshotseg.initializations.card import Card
    from fewshotseg.initializations.weights import (
        load_initialization,
        read_initialization,
        save_initialization,
    )
    from fewshotseg.meta_learning.meta_learner import MetaLearner
    from fewshotseg.meta_learning.update_routine import Learner, UpdateParams
    from fewshotseg.models.efficientlab import VARIANTS, EfficientLab, ModelConfig, build_model
    from fewshotseg.multiclass import MultiClassPrediction, MultiClassSegmenter
    from fewshotseg.segmenter import FewShotSegmenter, Prediction

__version__ = "0.1.0"

# name -> module that defines it. Add a name here and to __all__ to export it.
_EXPORTS: dict[str, str] = {
    "ModelConfig": "fewshotseg.models.efficientlab",
    "VARIANTS": "fewshotseg.models.efficientlab",
    "EfficientLab": "fewshotseg.models.efficientlab",
    "build_model": "fewshotseg.models.efficientlab",
    "UpdateParams": "fewshotseg.meta_learning.update_routine",
    "Learner": "fewshotseg.meta_learning.update_routine",
    "MetaLearner": "fewshotseg.meta_learning.meta_learner",
    "load_dataset": "fewshotseg.data.cache",
    "SegmentationDataset": "fewshotseg.data.dataset",
    "TaskTensors": "fewshotseg.data.tasks",
    "sample_classes": "fewshotseg.data.tasks",
    "paper_episodes": "fewshotseg.evaluation.protocols",
    "Episode": "fewshotseg.evaluation.protocols",
    "make_synthetic": "fewshotseg.data.synthetic",
    "SyntheticSpec": "fewshotseg.data.synthetic",
    "evaluate_initialization": "fewshotseg.evaluation.results",
    "EvaluationResult": "fewshotseg.evaluation.results",
    "ClassResult": "fewshotseg.evaluation.results",
    "save_initialization": "fewshotseg.initializations.weights",
    "read_initialization": "fewshotseg.initializations.weights",
    "load_initialization": "fewshotseg.initializations.weights",
    "FewShotSegmenter": "fewshotseg.segmenter",
    "Prediction": "fewshotseg.segmenter",
    "MultiClassSegmenter": "fewshotseg.multiclass",
    "MultiClassPrediction": "fewshotseg.multiclass",
    "Card": "fewshotseg.initializations.card",
    "make_corpus": "fewshotseg.data.corpus",
    "CorpusSpec": "fewshotseg.data.corpus",
    "MethodSpec": "fewshotseg.adaptation",
    "make_adapter": "fewshotseg.adaptation",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'fewshotseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
