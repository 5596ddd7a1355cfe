"""Evaluation protocols, UHO (early-stopping median rule, failures, shared studies) on the tiny benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from conftest import foreground_fraction
from fewshotseg.evaluation.evaluate import EvaluateConfig, evaluate, recompute
from fewshotseg.evaluation.intervals import class_bootstrap, class_bootstrap_ci
from fewshotseg.evaluation.metrics import split_scores
from fewshotseg.evaluation.protocols import Episode
from fewshotseg.initializations.adapting import resolve_update_params
from fewshotseg.meta_learning.update_routine import UpdateParams
from fewshotseg.tuning import uho
from fewshotseg.tuning.uho import TuneConfig, early_stopping_sets, median_steps, tune

FAST = UpdateParams(lr=0.02, steps=2, batch_size=4)


def test_paper_protocol_writes_raw_counts_that_reproduce_every_number(tiny_benchmark, tmp_path):
    cfg = EvaluateConfig(init="random", data=str(tiny_benchmark), run_dir=str(tmp_path), shots=[1, 5], size=32,
                         encoder="tinynet_e", max_tasks=2, workers=1)
    results = evaluate(cfg, params=FAST, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 5 * 2  # tasks x splits x queries x shot counts
    assert {r["shots"] for r in rows} == {1, 5}
    assert results["shots"]["5"]["paper_miou"]["n"] == 4  # 2 tasks x 2 splits
    scores = split_scores([r for r in rows if r["shots"] == 5])  # a task's 2 splits share it: bootstrap over tasks
    assert results["shots"]["5"]["paper_miou"] == class_bootstrap(list(scores.values()),
                                                                  [cls for cls, _ in scores]).as_dict()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["size"] == 32 and saved["protocol"] == "paper" and "torch" in saved["versions"]
    assert recompute(tmp_path) == json.loads(json.dumps(saved["shots"]))
    kept = np.load(tmp_path / "predictions.npz")
    assert kept["images"].shape[1:] == (3, 32, 32) and kept["probs"].shape == kept["masks"].shape


def test_per_query_protocol_has_one_episode_per_query_image(tiny_benchmark, all_foreground_init, tmp_path):
    # An initialization that predicts foreground everywhere: each query's IoU is its mask's foreground fraction,
    # so every reduction can be computed by hand from the mask files.
    cfg = EvaluateConfig(init=str(all_foreground_init), data=str(tiny_benchmark), run_dir=str(tmp_path), shots=[1],
                         size=32, encoder="tinynet_e", max_tasks=2, protocol="per-query")
    results = evaluate(cfg, params=FAST, progress=False)["shots"]["1"]
    rows = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 12  # every image of the 2 classes is the query once
    assert len({r["query"] for r in rows}) == 24
    classes = sorted({r["class"] for r in rows})
    fractions = {c: [foreground_fraction(tiny_benchmark / c / f"{n}.png") for n in range(1, 13)] for c in classes}
    for row in rows:
        cls, number = row["class"], int(Path(row["query"]).stem)
        assert row["iou"] == pytest.approx(fractions[cls][number - 1])  # |mask| / (32 * 32)
        assert (row["fg_u"], row["bg_i"]) == (32 * 32, 0)  # the prediction covers the whole image
    # class-pooled: sum of intersections over sum of unions; all unions are the image, so a class's IoU is the mean
    # of its fractions, and mIoU the mean over the 2 classes
    assert results["hsnet_miou"]["mean"] == pytest.approx(np.mean([np.mean(fractions[c]) for c in classes]))
    # FB-IoU: foreground as above over all 24 images; background intersection 0
    assert results["fb_iou"]["mean"] == pytest.approx(np.mean(list(fractions.values())) / 2)
    # the all-foreground floor is, by definition, this very prediction
    assert results["floors"]["all_foreground"]["hsnet_miou"]["mean"] == pytest.approx(results["hsnet_miou"]["mean"])


def test_evaluate_initialization_scores_a_known_prediction(tiny_benchmark, tiny_dataset, all_foreground_init):
    from fewshotseg.evaluation.protocols import paper_episodes
    from fewshotseg.evaluation.results import evaluate_initialization
    from fewshotseg.initializations.weights import load_initialization

    model, _ = load_initialization(str(all_foreground_init), None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = tiny_dataset.names[:2]
    result = evaluate_initialization(model, tiny_dataset, classes=names, shots=1, splits=2, params=FAST)
    # foreground everywhere: a split scores the mean foreground fraction of its 5 query images' masks
    expected = {}
    for episode in paper_episodes(tiny_dataset, names, 1, splits=2, seed=0):
        start = tiny_dataset.offsets[episode.cls][0]
        masks = [tiny_benchmark / Path(tiny_dataset.files[start + q]).with_suffix(".png") for q in episode.query]
        expected[(episode.cls, episode.split)] = np.mean([foreground_fraction(m) for m in masks])
    assert [c.name for c in result.classes] == names and result.tasks == 4
    for c in result.classes:
        assert c.split_ious == pytest.approx((expected[(c.name, 0)], expected[(c.name, 1)]))
        assert c.mean_iou == pytest.approx(np.mean(c.split_ious))
    values = list(expected.values())
    # each class has 2 splits, which share the class: the interval is the bootstrap over the 2 classes
    mean, low, high = class_bootstrap_ci(values, [cls for cls, _ in expected])
    assert result.interval == "class bootstrap"
    assert result.mean_iou == pytest.approx(np.mean(values)) and result.mean_iou == pytest.approx(mean)
    assert (result.ci95_low, result.ci95_high) == pytest.approx((low, high))
    class_means = sorted(np.mean([v for (c, _), v in expected.items() if c == name]) for name in names)
    assert class_means[0] <= low < high <= class_means[1]  # two classes: within the range of their means
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the initialization is untouched


def test_median_early_stopping_rule():
    assert median_steps([3, 7, 5, 20]) == 6  # median 6.0
    assert median_steps([4, 9, 2]) == 4
    assert median_steps([1, 2]) == 1  # 1.5 rounds down to a whole step, as the reference's int(median)


def test_early_stopping_never_uses_the_query_images():
    one_shot = Episode("c", 0, 0, support=(3,), query=(0, 1, 2, 4, 5), rest=(6, 7, 8, 9))
    train, held, retrain = early_stopping_sets(one_shot, 0.2)
    assert train == [3] and held == [6, 7, 8, 9] and not retrain
    five_shot = Episode("c", 0, 0, support=(5, 6, 7, 8, 9), query=(0, 1, 2, 3, 4), rest=())
    train, held, retrain = early_stopping_sets(five_shot, 0.2)
    assert train == [5, 6, 7, 8] and held == [9] and retrain
    assert not set(train + held) & set(five_shot.query)


def tune_config(tiny_benchmark, tmp_path, **changes) -> TuneConfig:
    values = dict(init="random", data=str(tiny_benchmark), run_dir=str(tmp_path / "tune"), trials=4, shots=1,
                  max_steps=4, val_tasks=3, size=32, encoder="tinynet_e")
    return TuneConfig(**{**values, **changes})


@pytest.mark.slow
def test_uho_finishes_and_its_best_trial_beats_its_worst(tiny_benchmark, tmp_path):
    result = tune(tune_config(tiny_benchmark, tmp_path), progress=False)
    trials = json.loads((tmp_path / "tune" / "trials.json").read_text())["trials"]
    values = [t["value"] for t in trials if t["state"] == "COMPLETE"]
    assert len(trials) == 4 and len(values) == 4
    assert result["objective"] == max(values) > min(values)
    assert 5e-4 <= result["update_params"]["lr"] <= 5e-2
    assert result["update_params"]["steps"] == next(t for t in trials if t["value"] == max(values))["median_steps"]
    saved = resolve_update_params(tmp_path / "tune" / "update_params.json")
    assert saved.lr == result["update_params"]["lr"]


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_as_failed_and_the_study_resumes(tiny_benchmark, tmp_path, monkeypatch):
    cfg = tune_config(tiny_benchmark, tmp_path, trials=2)
    monkeypatch.setitem(uho.SEARCH_SPACE, "lr", (1e10, 1e11, True, False))
    with pytest.raises(RuntimeError, match="no trial completed"):
        tune(cfg, progress=False)
    monkeypatch.undo()
    result = tune(tune_config(tiny_benchmark, tmp_path, trials=4), progress=False)  # the same study, resumed
    study = optuna.load_study(study_name="uho", storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 2
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert result["failed_trials"] == 2


def test_a_study_refuses_another_setting(tiny_benchmark, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"  # one study, two run folders (one folder refuses other settings)
    tune(tune_config(tiny_benchmark, tmp_path, trials=1, storage=storage), progress=False)
    with pytest.raises(ValueError, match="another --study"):
        tune(tune_config(tiny_benchmark, tmp_path, trials=2, shots=5, storage=storage, run_dir=str(tmp_path / "b")),
             progress=False)


def two_workers(tiny_benchmark, tmp_path, storage: str, study: str) -> optuna.Study:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    flags = ["tune", "--init", "random", "--data", str(tiny_benchmark), "--trials", "6", "--shots", "1",
             "--max-steps", "3", "--val-tasks", "2", "--size", "32", "--encoder", "tinynet_e",
             "--storage", storage, "--study", study]
    procs = [subprocess.Popen([sys.executable, "-m", "fewshotseg", *flags, "--run-dir", str(tmp_path / f"w{i}")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    return optuna.load_study(study_name=study, storage=storage)


def check_shared(study: optuna.Study) -> None:
    finished = [t for t in study.trials if t.state.is_finished()]
    assert 6 <= len(finished) <= 7  # one study holds all trials (a race may add one)
    assert len({t.user_attrs["pid"] for t in finished}) == 2  # both processes contributed


@pytest.mark.slow
def test_two_tune_processes_share_one_sqlite_study(tiny_benchmark, tmp_path):
    check_shared(two_workers(tiny_benchmark, tmp_path, f"sqlite:///{tmp_path / 'shared.db'}", "shared"))


@pytest.mark.postgres
def test_two_tune_processes_share_one_postgresql_study(tiny_benchmark, tmp_path):
    url = os.environ.get("FEWSHOTSEG_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("FEWSHOTSEG_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)")
    study = f"shared-{os.getpid()}"
    check_shared(two_workers(tiny_benchmark, tmp_path, url, study))


@pytest.mark.slow
def test_a_widened_lr_range_is_searched_and_a_bound_is_warned_about(tiny_benchmark, tmp_path):
    from dataclasses import replace

    cfg = replace(tune_config(tiny_benchmark, tmp_path, trials=2), lr_range="0.06,0.08", bn_policy="support")
    result = tune(cfg, progress=False)
    trials = json.loads((tmp_path / "tune" / "trials.json").read_text())["trials"]
    assert all(0.06 <= t["params"]["lr"] <= 0.08 for t in trials)  # outside the paper's [5e-4, 5e-2]
    assert result["update_params"]["bn_policy"] == "support"  # tuned, and recorded, in the deployed regime
    # a range this narrow has no interior: whatever lr wins lies within 1.25x of a bound, and the log says so
    assert "edge of the searched range [0.06, 0.08]" in (tmp_path / "tune" / "log.txt").read_text()


@pytest.mark.parametrize("method", ["probe", "finetune"])
def test_evaluate_prints_the_method_that_ran_and_each_mean_iou_once(tiny_benchmark, tmp_path, capsys, method):
    """The probe does not use U: evaluate names the probe, its settings and their source, and no U values; fine-tuning
    prints U's values and their source. Either way each shot count's mean IoU is printed once."""
    from fewshotseg.cli import main

    run = tmp_path / "eval"
    argv = ["evaluate", "--init", "random", "--data", str(tiny_benchmark), "--run-dir", str(run), "--shots", "1",
            "--size", "32", "--encoder", "tinynet_e", "--max-tasks", "2", "--method", method]
    if method == "finetune":
        argv += ["--u-lr", "0.02", "--u-steps", "2", "--u-batch-size", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("1-shot: mean IoU") == 1, printed
    assert "class-pooled mIoU" in printed and "FB-IoU" in printed
    adaptation = next(line for line in printed.splitlines() if line.startswith("adaptation: "))
    assert "given (--method " + method + ")" in adaptation
    if method == "probe":
        assert adaptation.startswith("adaptation: probe (") and "l2 0.001" in adaptation
        assert "settings from probe defaults" in adaptation and "U is not used" in adaptation
        assert "U: lr" not in printed and "lr 0.0" not in printed and "steps" not in printed
    else:
        assert "1-shot U: lr 0.02, 2 steps, batch 4" in printed and "with lr=0.02" in printed
    assert "adaptation: " in (run / "log.txt").read_text()  # the log says it too
    results = json.loads((run / "results.json").read_text())
    assert results["method"]["method"] == method and results["method"]["given"] is True
