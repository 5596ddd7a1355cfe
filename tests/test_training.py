"""Meta-training and joint training end to end on the tiny benchmark: run folders, resume, distributed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fewshotseg.evaluation.results import evaluate_initialization
from fewshotseg.initializations.weights import load_checkpoint, load_initialization, read_initialization
from fewshotseg.runs.run_dir import read_jsonl
from fewshotseg.training.joint_train import JointTrainConfig
from fewshotseg.training.meta_train import MetaTrainConfig


def meta_flags(data: Path, run_dir: Path, iterations: int, **extra) -> list[str]:
    flags = {"data": data, "run-dir": run_dir, "size": 32, "encoder": "tinynet_e", "iterations": iterations,
             "meta-optimizer": "adam", "meta-step": 1e-3, "inner-lr": 0.02, "inner-steps": 2, "meta-batch": 3,
             "eval-interval": 0, "checkpoint-interval": 2, "threads": 1, **extra}
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))]


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fewshotseg", *args], env=env, capture_output=True, text=True,
                          **kwargs)


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_initialization(run_dir / "model.safetensors")[1]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_meta_train_writes_a_complete_run_folder(tiny_benchmark, tiny_dataset, tmp_path):
    from fewshotseg.training.meta_train import meta_train

    cfg = MetaTrainConfig(data=str(tiny_benchmark), run_dir=str(tmp_path / "run"), size=32, encoder="tinynet_e",
                          iterations=4, meta_batch=2, inner_lr=0.05, inner_steps=2, eval_interval=2, eval_tasks=5,
                          checkpoint_interval=2, threads=1, algorithm="reptile")  # lr 0.05: U finds some foreground
    out = meta_train(cfg)
    run = tmp_path / "run"
    assert out == run / "model.safetensors"
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "checkpoint.pt", "model.safetensors"):
        assert (run / name).is_file(), name
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [1, 2, 3, 4]
    assert [("val_miou" in m) for m in metrics] == [False, True, False, True]  # every eval_interval
    # the last validation scores the final weights theta with meta-training's U on the 5 held-out validation
    # classes, as evaluating the written initialization on those classes (one split each) does
    val = sorted(json.loads((tiny_benchmark / "splits.json").read_text())["val"])
    model, _ = load_initialization(str(out), None)
    expected = evaluate_initialization(model, tiny_dataset, classes=val, shots=cfg.eval_shots, splits=1,
                                       params=cfg.update_params(), seed=cfg.seed)
    assert metrics[-1]["val_tasks"] == expected.tasks == 5
    assert metrics[-1]["val_miou"] == pytest.approx(expected.mean_iou, abs=1e-9)
    assert metrics[-1]["val_ci95"] == pytest.approx(expected.ci95_high - expected.mean_iou, abs=1e-9)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["iteration"] == 4 and ckpt["config"]["algorithm"] == "reptile"
    assert {"model", "optimizer", "rng", "model_config"} <= ckpt.keys()
    with pytest.raises(FileExistsError, match="--resume"):
        meta_train(cfg)


@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(tiny_benchmark, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = run_cli(["meta-train", *meta_flags(tiny_benchmark, full, 10)])
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fewshotseg", "meta-train", *meta_flags(tiny_benchmark, killed, 10)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill as soon as a mid-run checkpoint exists
        ckpt = killed / "checkpoint.pt"
        if ckpt.exists() and load_checkpoint(ckpt)["iteration"] >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = load_checkpoint(killed / "checkpoint.pt")["iteration"]
    assert 4 <= stopped_at < 10 and not (killed / "model.safetensors").exists()
    resumed = run_cli(["meta-train", *meta_flags(tiny_benchmark, killed, 10), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_state(final_state(full), final_state(killed))
    assert [m["iteration"] for m in read_jsonl(killed / "metrics.jsonl")] == list(range(1, 11))


@pytest.mark.slow
def test_two_process_torchrun_equals_one_process(tiny_benchmark, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = run_cli(["meta-train", *meta_flags(tiny_benchmark, one, 3)])
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "fewshotseg", "meta-train", *meta_flags(tiny_benchmark, two, 3)],
                          env=env, capture_output=True, text=True)
    assert dist.returncode == 0, dist.stderr[-3000:]
    assert "2 process(es)" in (two / "log.txt").read_text()
    assert_same_state(final_state(one), final_state(two))


@pytest.mark.slow
def test_resume_refuses_changed_settings(tiny_benchmark, tmp_path):
    run = tmp_path / "run"
    assert run_cli(["meta-train", *meta_flags(tiny_benchmark, run, 2)]).returncode == 0
    changed = run_cli(["meta-train", *meta_flags(tiny_benchmark, run, 2, **{"inner-lr": 0.5}), "--resume"])
    assert changed.returncode == 2 and "inner_lr" in changed.stderr


def test_joint_training_gives_an_initialization_with_a_fresh_two_class_head(tiny_benchmark, tmp_path):
    from fewshotseg.training.joint_train import joint_train

    cfg = JointTrainConfig(data=str(tiny_benchmark), run_dir=str(tmp_path / "joint"), size=32, encoder="tinynet_e",
                           epochs=0.2, batch_size=4, threads=1)
    out = joint_train(cfg)
    config, state, extra = read_initialization(out)
    n_train = len(json.loads((tiny_benchmark / "splits.json").read_text())["train"])
    assert config.num_classes == n_train + 1 and state["head.1.weight"].shape[0] == n_train + 1
    model, described = load_initialization(str(out), config)
    assert model.config.num_classes == 2 and "fresh 2-class head" in described
    torch.testing.assert_close(model.encoder.body.conv_stem.weight, state["encoder.body.conv_stem.weight"])
    assert read_jsonl(tmp_path / "joint" / "metrics.jsonl")[-1]["loss"] > 0


def test_joint_training_stops_on_a_non_finite_loss(tiny_benchmark, tmp_path, monkeypatch):
    """The same divergence error as meta-training's, naming the setting to change; no initialization is written."""
    from fewshotseg.errors import DivergedError
    from fewshotseg.training import joint_train as module

    monkeypatch.setattr(module, "segmentation_loss", lambda logits, labels: logits.sum() * float("nan"))
    cfg = JointTrainConfig(data=str(tiny_benchmark), run_dir=str(tmp_path / "joint"), size=32, encoder="tinynet_e",
                           epochs=0.2, batch_size=4, threads=1)
    with pytest.raises(DivergedError, match="joint training diverged at step 0 .*lower --lr"):
        module.joint_train(cfg)
    assert not (tmp_path / "joint" / "model.safetensors").exists()


def test_meta_train_writes_a_card_and_stops_on_non_finite_weights(tiny_benchmark, tmp_path, monkeypatch):
    """The run's card holds meta-training's omega as U; a meta-update that makes weights infinite is a divergence
    error (the inner loss may still be finite at that moment), and no initialization is written."""
    from fewshotseg.errors import DivergedError
    from fewshotseg.initializations.card import read_card
    from fewshotseg.training.meta_train import meta_train

    base = dict(data=str(tiny_benchmark), size=32, encoder="tinynet_e", iterations=2, meta_batch=2, inner_steps=2,
                eval_interval=0, checkpoint_interval=2, threads=1, algorithm="reptile")
    meta_train(MetaTrainConfig(run_dir=str(tmp_path / "ok"), inner_lr=0.03, **base))
    card = read_card(tmp_path / "ok")
    assert card.update_params["default"]["lr"] == 0.03 and card.update_params["default"]["steps"] == 2
    assert card.training["algorithm"] == "reptile" and card.size == 32
    from fewshotseg.meta_learning.meta_learner import MetaLearner

    apply = MetaLearner.apply

    def overflowing(self, slots):  # a meta-update that leaves one weight infinite, with a finite inner loss
        loss = apply(self, slots)
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("inf"))
        return loss

    monkeypatch.setattr(MetaLearner, "apply", overflowing)
    with pytest.raises(DivergedError, match="meta-update of iteration 1"):  # the last iteration's update too
        meta_train(MetaTrainConfig(run_dir=str(tmp_path / "bad"), **{**base, "iterations": 1}))
    assert not (tmp_path / "bad" / "model.safetensors").exists()
