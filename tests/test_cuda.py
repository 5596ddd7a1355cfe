"""The CUDA path: the default method, U, meta-training and evaluation on a GPU, checked against the CPU.

Skipped where PyTorch sees no CUDA device (CI has none). On a GPU machine the whole suite runs as usual (commands
with `--device auto` then take the GPU), and these tests check what only a GPU run can show: that each path runs
there and agrees with the CPU. `bench/gpu_check.sh` runs them first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REAL_PHOTOS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to PyTorch")


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "fewshotseg", *args], env=env, capture_output=True, text=True)


def cat_photos() -> tuple[list[Path], list[Path], Path]:
    images = sorted((REAL_PHOTOS / "cat").glob("*.jpg"))
    return images[:-1], [p.with_suffix(".png") for p in images[:-1]], images[-1]


def test_the_default_probe_gives_the_cpus_masks_on_the_gpu():
    from fewshotseg import FewShotSegmenter

    images, masks, query = cat_photos()
    found = {}
    for device in ("cpu", "cuda"):
        seg = FewShotSegmenter.from_pretrained("general", device=device).fit(images, masks)
        found[device] = seg.predict([query])[0]
    agree = float((found["cpu"].mask == found["cuda"].mask).mean())
    assert agree > 0.995, agree  # float sums in another order may flip a pixel on an edge, no more
    np.testing.assert_allclose(found["cpu"].probability, found["cuda"].probability, atol=2e-2)


def test_fine_tuning_with_u_runs_on_the_gpu():
    from fewshotseg import FewShotSegmenter, UpdateParams

    images, masks, query = cat_photos()
    seg = FewShotSegmenter.from_pretrained("general", device="cuda")
    before = {k: v.detach().clone() for k, v in seg.model.state_dict().items()}
    seg.fit(images, masks, method="finetune", update_params=UpdateParams(lr=0.005, steps=5, batch_size=2))
    pred = seg.predict([query])[0]
    assert np.isfinite(pred.probability).all() and pred.mask.shape == pred.probability.shape
    adapted = seg.model.state_dict()  # after fit: the adapted network, on the GPU, moved by U's steps
    assert all(v.device.type == "cuda" for v in adapted.values())
    assert any(not torch.equal(before[k].cpu(), v.cpu()) for k, v in adapted.items())


def test_meta_training_on_the_gpu_writes_weights_the_cpu_reads_and_resumes(tiny_benchmark, tmp_path):
    from fewshotseg.initializations.weights import read_initialization

    run = tmp_path / "run"
    flags = ["--data", str(tiny_benchmark), "--run-dir", str(run), "--size", "32", "--encoder", "tinynet_e",
             "--meta-batch", "3", "--inner-steps", "2", "--eval-interval", "0", "--checkpoint-interval", "2",
             "--device", "cuda"]
    done = cli("meta-train", *flags, "--iterations", "4")
    assert done.returncode == 0, done.stderr
    state = read_initialization(run / "model.safetensors")[1]
    assert all(v.device.type == "cpu" and torch.isfinite(v.float()).all() for v in state.values())
    more = cli("meta-train", *flags, "--iterations", "6", "--resume")
    assert more.returncode == 0, more.stderr
    assert json.loads((run / "run.json").read_text())  # the run folder's record survives the resume


def test_evaluation_on_the_gpu_scores_the_cpus_episodes(tiny_benchmark, tmp_path):
    scores = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        done = cli("evaluate", "--init", "random", "--data", str(tiny_benchmark), "--run-dir", str(out), "--size",
                   "32", "--encoder", "tinynet_e", "--shots", "1", "--device", device)
        assert done.returncode == 0, done.stderr
        scores[device] = json.loads((out / "results.json").read_text())
    rows = {d: s["shots"]["1"] for d, s in scores.items()}
    for key in ("query_images", "classes"):  # the same episodes: the same classes and query images
        assert rows["cpu"][key] == rows["cuda"][key] > 0
    for row in rows.values():
        assert 0 <= row["paper_miou"]["mean"] <= 1
