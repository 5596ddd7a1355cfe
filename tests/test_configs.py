"""Every shipped config file resolves into its command's settings, and presets say how they depart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fewshotseg.config import resolve
from fewshotseg.evaluation.analyze_weights import AnalyzeConfig
from fewshotseg.evaluation.evaluate import EvaluateConfig
from fewshotseg.evaluation.fp_k import FPKConfig
from fewshotseg.training.joint_train import JointTrainConfig
from fewshotseg.training.meta_train import MetaTrainConfig
from fewshotseg.tuning.uho import TuneConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REQUIRED = {"data": "/data", "run_dir": "/runs/x", "init": "random"}
KIND = {"joint-train": JointTrainConfig, "uho": TuneConfig, "evaluate": EvaluateConfig, "fp-k": FPKConfig,
        "weights": AnalyzeConfig}


def config_class(path: Path):
    for prefix, cls in KIND.items():
        if path.stem.startswith(prefix):
            return cls
    return MetaTrainConfig


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_config_files_resolve(path):
    cls = config_class(path)
    required = {k: v for k, v in REQUIRED.items() if k in cls.__dataclass_fields__}
    cfg = resolve(cls, file=path, **required)
    if path.stem == "general":  # the shipped initialization's CPU-budget config (see its comments)
        assert (cfg.encoder, cfg.size, cfg.meta_optimizer, cfg.inner_lr) == ("tf_efficientnet_lite0", 160, "adam", 0.01)
        # it reproduces what shipped: the settings the shipped card records for both of its training runs
        card = json.loads((CONFIGS.parent / "src/fewshotseg/inits/general-fomaml/card.json").read_text())
        assert (card["model"]["encoder"], card["model"]["variant"], card["size"]) == (cfg.encoder, cfg.variant, cfg.size)
        first, second = card["training"]["init_training"], card["training"]
        assert "--config configs/general.yaml" in first["command"] and "--init" not in first["command"]
        assert first["init"] == yaml.safe_load(path.read_text())["init"]  # (the test passes its own init above)
        for run in (first, second):
            assert (run["algorithm"], run["meta_batch"]) == (cfg.algorithm, cfg.meta_batch)
            assert f"--size {cfg.size}" in run["command"]
        assert (first["meta_optimizer"], first["meta_step"], first["meta_step_final"]) == (
            cfg.meta_optimizer, cfg.meta_step, cfg.meta_step_final)
        assert second["meta_optimizer"] == f"{cfg.meta_optimizer} {cfg.meta_step:g} -> {cfg.meta_step_final:g}"
        omega = card["update_params"]["default"]
        assert (omega["lr"], omega["steps"], omega["bn_policy"]) == (cfg.inner_lr, cfg.inner_steps, cfg.bn_policy)
        return
    if path.stem == "r2d2":  # compared with FOMAML* in one budget: everything but the algorithm as general.yaml
        general = resolve(cls, file=CONFIGS / "general.yaml", **required)
        assert cfg.algorithm == "r2d2"
        same = ("variant", "encoder", "init", "size", "meta_optimizer", "meta_step", "meta_step_final", "meta_batch",
                "eval_interval", "eval_tasks", "eval_shots")
        assert {k: getattr(cfg, k) for k in same} == {k: getattr(general, k) for k in same}
        return
    assert cfg.size == 224  # every paper config runs at the paper's resolution
    if cls is MetaTrainConfig:
        assert cfg.iterations == 50000 and cfg.meta_batch == 5 and cfg.inner_lr == 0.005


def test_unknown_field_in_a_config_file_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner_lrr: 0.1\n")
    with pytest.raises(ValueError, match="inner_lrr"):
        resolve(MetaTrainConfig, file=bad, **{k: v for k, v in REQUIRED.items() if k != "init"})


def test_flags_override_file_override_preset(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("inner_lr: 0.03\nsize: 96\n")
    cfg = resolve(MetaTrainConfig, preset="cpu-quick", file=cfg_file, size=48, data="d", run_dir="r")
    assert cfg.encoder == MetaTrainConfig.PRESETS["cpu-quick"]["encoder"]  # from the preset
    assert cfg.inner_lr == 0.03  # the file beats the preset
    assert cfg.size == 48  # the flag beats the file
    with pytest.raises(ValueError, match="--data"):
        resolve(MetaTrainConfig, run_dir="r")
