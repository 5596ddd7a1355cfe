"""Live curves: meta-train, joint-train and tune write TensorBoard event files with the documented tags."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fewshotseg.training.joint_train import JointTrainConfig, joint_train
from fewshotseg.training.meta_train import MetaTrainConfig, meta_train


def tags(folder: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_meta_and_joint_training_write_event_files(tiny_benchmark, tmp_path):
    meta_train(MetaTrainConfig(data=str(tiny_benchmark), run_dir=str(tmp_path / "meta"), size=32, encoder="tinynet_e",
                               iterations=4, meta_batch=2, inner_steps=2, eval_interval=2, eval_tasks=2,
                               checkpoint_interval=2, threads=1, algorithm="reptile"))
    found = tags(tmp_path / "meta")
    assert {"train/loss", "train/epsilon", "train/step_seconds", "val/miou"} <= set(found)
    assert len(found["train/loss"]) == 4 and len(found["val/miou"]) == 2  # every iteration; every validation
    assert found["train/epsilon"][0] > found["train/epsilon"][-1]  # the decaying meta step size
    joint_train(JointTrainConfig(data=str(tiny_benchmark), run_dir=str(tmp_path / "joint"), size=32,
                                 encoder="tinynet_e", epochs=0.05, batch_size=4, threads=1, checkpoint_interval=100))
    found = tags(tmp_path / "joint")
    assert {"train/loss", "train/lr", "train/step_seconds"} <= set(found)
