"""FP-k on a benchmark with enough pairs per class, and the App. G weight distances."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import foreground_fraction
from fewshotseg.analysis.weight_distance import block_of, distances, group_blocks
from fewshotseg.data.tasks import episode_rng, fp_k_prefixes
from fewshotseg.evaluation.analyze_weights import AnalyzeConfig, analyze_weights
from fewshotseg.evaluation.fp_k import FPKConfig, fp_k
from fewshotseg.evaluation.intervals import class_bootstrap
from fewshotseg.meta_learning.update_routine import UpdateParams


@pytest.fixture(scope="module")
def many_pairs(tmp_path_factory):
    from fewshotseg.data.synthetic import SyntheticSpec, make_synthetic

    out = tmp_path_factory.mktemp("many")
    make_synthetic(out, SyntheticSpec(classes=6, pairs=22, size=32, seed=5), progress=False)
    return out


@pytest.mark.slow
def test_fp_k_runs_every_k_for_every_init(many_pairs, all_foreground_init, tmp_path):
    tuned = tmp_path / "tuned.json"
    UpdateParams(lr=0.01, steps=3).save(tuned)
    cfg = FPKConfig(data=str(many_pairs), run_dir=str(tmp_path / "run"), inits=["a=random", f"b={all_foreground_init}"],
                    update_params=[f"b={tuned}"], ks=[1, 2, 10, 12], repeats=2, test_images=10, max_tasks=2,
                    patience=2, max_steps=4, size=32, encoder="tinynet_e")
    summary = fp_k(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "fp_k.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 2 * 4  # inits x tasks x repeats x ks
    assert set(summary) == {"a", "b"} and set(summary["a"]) == {"1", "2", "10", "12"}
    # k < 10: U as given, the paper's Table 3 (lr 0.005, 5 steps) without a file, the tuned file's with one
    small = {label: [r for r in rows if r["k"] < 10 and r["init"] == label] for label in ("a", "b")}
    assert {(r["lr"], r["steps"]) for r in small["a"]} == {(0.005, 5)}
    assert {(r["lr"], r["steps"]) for r in small["b"]} == {(0.01, 3)}
    # k >= 10: early stopping at --lr chose the steps; b's prediction never changes, so its first step stays best
    large = [r for r in rows if r["k"] >= 10]
    assert {r["lr"] for r in large} == {0.005} and all(1 <= r["steps"] <= 4 for r in large)
    assert {r["steps"] for r in large if r["init"] == "b"} == {1}
    # b predicts foreground everywhere: a row's IoU is the mean foreground fraction of its repeat's 10 test images
    # (the last 10 of one shuffle, shared by every k) and never of the k training images
    names = sorted({r["class"] for r in rows})
    for row in (r for r in rows if r["init"] == "b"):
        fractions = [foreground_fraction(many_pairs / row["class"] / f"{n}.png") for n in range(1, 23)]
        _, test = fp_k_prefixes(episode_rng(0, 8, names.index(row["class"]), row["repeat"]), 22, cfg.ks, 10)
        assert row["iou"] == pytest.approx(np.mean([fractions[i] for i in test]))
    by_repeat = {(r["class"], r["repeat"]): r["iou"] for r in rows if r["init"] == "b"}
    assert len(set(by_repeat.values())) == len(by_repeat)  # each repeat draws its own test set
    # a task's 2 repeats share the task: the interval is the bootstrap over the 2 tasks
    for k in cfg.ks:
        items = [r for r in rows if r["init"] == "b" and r["k"] == k]
        estimate = class_bootstrap([r["iou"] for r in items], [r["class"] for r in items]).as_dict()
        assert {key: summary["b"][str(k)][key] for key in estimate} == estimate
        assert estimate["interval"] == "class bootstrap" and estimate["n"] == 4 and estimate["classes"] == 2


def test_fp_k_says_when_classes_are_too_small(tiny_benchmark, tmp_path):
    cfg = FPKConfig(data=str(tiny_benchmark), run_dir=str(tmp_path), inits=["random"], size=32, encoder="tinynet_e")
    with pytest.raises(ValueError, match="--pairs 420"):
        fp_k(cfg, progress=False)


def test_distances_on_two_known_parameter_sets():
    before = {"encoder.body.conv_stem.weight": torch.tensor([3.0, 4.0]), "head.1.weight": torch.tensor([1.0, 0.0])}
    after = {"encoder.body.conv_stem.weight": torch.tensor([0.0, 0.0]) + torch.tensor([3.0, 0.0]),
             "head.1.weight": torch.tensor([0.0, 2.0])}
    found = distances(before, after, group_blocks(list(before)))
    stem, head = found["encoder.stem"], found["head"]
    assert stem["d1"] == pytest.approx(4.0)  # ||(3,4) - (3,0)||
    assert stem["d2"] == pytest.approx(math.hypot(0.6 - 1.0, 0.8 - 0.0))  # unit vectors (0.6, 0.8) and (1, 0)
    assert stem["d3"] == pytest.approx(2.0)  # mean(|0|, |4|)
    assert head["d1"] == pytest.approx(math.sqrt(5)) and head["d2"] == pytest.approx(math.sqrt(2))
    assert head["d3"] == pytest.approx(1.5)
    assert found["network"]["d1"] == pytest.approx(math.sqrt(16 + 5))


def test_blocks_follow_the_network():
    assert block_of("encoder.body.conv_stem.weight") == "encoder.stem"
    assert block_of("encoder.body.bn1.weight") == "encoder.stem"
    assert block_of("encoder.body.blocks.3.1.conv_pw.weight") == "encoder.block3.1"
    assert block_of("decoder.rsd.1.fuse.0.weight") == "decoder.rsd1"
    assert block_of("head.1.bias") == "head"


def test_analyze_weights_compares_initializations(tiny_benchmark, tmp_path):
    cfg = AnalyzeConfig(data=str(tiny_benchmark), run_dir=str(tmp_path), inits=["x=random", "y=random"],
                        max_tasks=2, num_splits=1, size=32, encoder="tinynet_e")
    summary = analyze_weights(cfg, progress=False)
    assert set(summary) == {"x", "y"}
    blocks = list(summary["x"])
    assert blocks[0] == "encoder.stem" and "head" in blocks and "network" in blocks
    assert summary["x"]["head"]["d1"]["mean"] > 0 and summary["x"]["head"]["d1"]["n"] == 2
    assert summary["x"]["head"]["d1"]["interval"] == "t"  # one split per task: Student's t over the 2 tasks
