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


@pytest.fixture
def one_torch_thread():
    """This process on one torch thread for the test, as the single-threaded subprocesses and workers it is compared
    with (an earlier in-process meta-train may have left it with more, and another summation order can flip a
    pixel)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="session")
def all_foreground_init(tmp_path_factory) -> Path:
    """A tinynet_e initialization that predicts foreground everywhere: zero head kernel, head bias (-50, +50).

    The foreground logit leads by 100 at every pixel; a few steps of U at a small learning rate move the logits by
    far less, so every query image is predicted all foreground and its IoU is its mask's foreground fraction: a
    score a test computes by hand from the mask files."""
    from fewshotseg.initializations.weights import save_initialization
    from fewshotseg.models.efficientlab import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(variant="efficientlab-3", encoder="tinynet_e"))
    with torch.no_grad():
        model.head[1].weight.zero_()
        model.head[1].bias.copy_(torch.tensor([-50.0, 50.0]))
    path = tmp_path_factory.mktemp("init") / "all-foreground.safetensors"
    save_initialization(path, model)
    return path


def foreground_fraction(mask_file: Path) -> float:
    """The foreground fraction of a mask file: 0/255 or 0/1, grayscale, RGB or palette indices; every nonzero
    pixel is foreground."""
    import numpy as np
    from PIL import Image

    values = np.asarray(Image.open(mask_file))
    return float(((values.max(-1) if values.ndim == 3 else values) > 0).mean())
