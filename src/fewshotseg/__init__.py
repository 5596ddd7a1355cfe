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
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "save_initialization": "fewshotseg.runs.initialization",
    "read_initialization": "fewshotseg.runs.initialization",
    "load_initialization": "fewshotseg.runs.initialization",
    "FewShotSegmenter": "fewshotseg.segmenter",
    "Prediction": "fewshotseg.segmenter",
    "Card": "fewshotseg.runs.card",
    "make_corpus": "fewshotseg.data.corpus",
    "CorpusSpec": "fewshotseg.data.corpus",
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
