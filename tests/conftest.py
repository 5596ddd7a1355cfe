"""Shared fixtures: tiny models and a tiny built-in benchmark, so every test runs in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hub downloads would retry for ~46 s before failing
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process: two threads stall when a core is busy

import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


REAL_PHOTOS = REPO / "tests" / "fixtures" / "real-photos"  # real photos and masks; see its README.md


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    """24 classes x 12 pairs at 32 px of the built-in benchmark, with its own splits."""
    from fewshotseg.data.synthetic import SyntheticSpec, make_synthetic

    out = tmp_path_factory.mktemp("bench")
    make_synthetic(out, SyntheticSpec(classes=24, pairs=12, size=32, seed=3), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tiny_benchmark):
    from fewshotseg.data.cache import load_dataset

    return load_dataset(tiny_benchmark, 32, progress=False)


@pytest.fixture()
def tiny_config():
    from fewshotseg.models.efficientlab import ModelConfig

    return ModelConfig(variant="efficientlab-3", encoder="tinynet_e")
