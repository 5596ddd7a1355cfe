"""`fewshotseg report` on hand-written run folders: tables with exact numbers, valid figures, skipped bad runs.

The fixtures write the files exactly as evaluate, tune, fp-k, analyze-weights and meta-train do, with known
numbers, so the test needs no model and no training and runs in a few seconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fewshotseg.reports.report import write_report


def estimate(mean: float, ci95: float, n: int = 480) -> dict:
    return {"mean": mean, "low": mean - ci95, "high": mean + ci95, "ci95": ci95, "n": n}


def shot_summary(paper: float, ci: float, pooled: float) -> dict:
    return {"paper_miou": estimate(paper, ci), "hsnet_miou": estimate(pooled, 0.02, 240),
            "fb_iou": estimate(0.8123, 0.01, 240), "per_episode_miou": paper, "query_images": 2400, "classes": 240}


PROBE = {"method": "probe", "settings": {"features": ["skip", "deep"], "l2": 0.003, "self_train": 2},
         "source": "card of general: chosen on validation classes", "given": False}


def write_evaluate(folder: Path, label: str | None, one: float, five: float, *, lr: float = 0.005,
                   exist_ok: bool = False, method: dict | None = None) -> Path:
    """results.json as evaluate writes it; `method` None: as written before evaluate recorded the method."""
    folder.mkdir(parents=True, exist_ok=exist_ok)
    results = {"described": f"meta-trained {folder.name}", "init": "runs/x/model.safetensors", "data": "fss1000",
               "size": 32, "protocol": "paper", "tasks": 240,
               "update_params": {"lr": lr, "steps": 5, "batch_size": 8, "dropout": 0.2, "aug_rate": 0.5},
               "shots": {"1": shot_summary(one, 0.01162, 0.70123), "5": shot_summary(five, 0.00871, 0.75)}}
    if label:
        results["label"] = label
    if method is not None:
        results["method"] = method
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    rows = [{"class": "cat", "split": 0, "shots": 1, "query": "1.jpg", "fg_i": 5, "fg_u": 9, "bg_i": 90,
             "bg_u": 94, "iou": 0.55}]
    (folder / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 32, 32), dtype=np.int64)
    masks[:, 8:24, 10:26] = 1
    probs = np.clip(masks * 0.6 + rng.uniform(0, 0.55, masks.shape), 0, 1)  # a few errors each way
    np.savez_compressed(folder / "predictions.npz", shots=np.array([1, 1, 5, 5]),
                        images=rng.uniform(0, 1, (4, 3, 32, 32)).astype(np.float32), masks=masks,
                        probs=probs.astype(np.float32))
    return folder


def write_tune(folder: Path) -> Path:
    folder.mkdir(parents=True)
    lrs = [6e-4, 1.2e-3, 2.5e-3, 4e-3, 7e-3, 1.1e-2, 2e-2, 4.5e-2]
    trials = []
    for i, lr in enumerate(lrs):
        failed = i == 7
        value = None if failed else 0.7 - 0.05 * (np.log10(lr) - np.log10(4e-3)) ** 2
        trials.append({"number": i, "state": "FAIL" if failed else "COMPLETE", "value": value, "params": {"lr": lr},
                       "median_steps": None if failed else 3 + i, "best_steps": None if failed else [3 + i] * 4,
                       "random": i < 4})
    doc = {"study": "uho", "shots": 5, "init": "runs/meta", "described": "meta", "search": "lr", "max_steps": 20,
           "trials": trials}
    (folder / "trials.json").write_text(json.dumps(doc))
    chosen = {"update_params": {"lr": 4e-3, "steps": 6, "batch_size": 8, "dropout": 0.2, "aug_rate": 0.5},
              "shots": 5, "objective": 0.7, "trial": 3, "described": "meta", "failed_trials": 1}
    (folder / "update_params.json").write_text(json.dumps(chosen))
    return folder


def write_fp_k(folder: Path) -> Path:
    folder.mkdir(parents=True)
    ks = [1, 5, 10, 50]
    summary = {label: {str(k): {**estimate(base + 0.05 * np.log10(k), 0.03, 20), "median_steps": 5.0} for k in ks}
               for label, base in (("meta", 0.55), ("imagenet", 0.45))}
    (folder / "fp_k_summary.json").write_text(json.dumps({"tasks": ["a", "b"], "ks": ks, "repeats": 2,
                                                          "summary": summary}))
    (folder / "fp_k.jsonl").write_text("")
    return folder


def write_weights(folder: Path) -> Path:
    folder.mkdir(parents=True)
    blocks = ["encoder.stem", "encoder.block0.0", "encoder.block1.0", "encoder.block1.1", "decoder.rsd0", "head"]
    summary = {}
    for label, scale in (("meta", 1.0), ("joint", 2.0)):
        summary[label] = {b: {m: estimate(scale * (i + 1) * f, 0.1 * scale * f, 40)
                              for m, f in (("d1", 0.1), ("d2", 0.01), ("d3", 0.001))} for i, b in enumerate(blocks)}
        summary[label]["network"] = {"d1": estimate(scale * 1.2345, 0.05, 40)}
    (folder / "weight_summary.json").write_text(json.dumps({"update_params": {"lr": 0.005, "steps": 5}, "tasks": 20,
                                                            "summary": summary}))
    return folder


def write_meta_train(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"algorithm": "fomaml-star", "iterations": 60, "size": 32}))
    rows = []
    for it in range(1, 61):
        row = {"iteration": it, "loss": 1.0 / it**0.3, "meta_step": 0.1}
        if it % 20 == 0:
            row |= {"val_miou": 0.4 + it / 300, "val_ci95": 0.03, "val_tasks": 10}
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "log.txt").write_text("2025-01-01 00:00:00 done: 60 meta-iterations in 5 s\n")
    return folder


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Path]:
    return {
        "eval_a": write_evaluate(tmp_path / "eval-a", "EfficientLab-3 meta", 0.76451, 0.80123),
        "eval_b": write_evaluate(tmp_path / "eval-b", None, 0.70001, 0.81234, lr=0.01),
        "tune": write_tune(tmp_path / "tune"),
        "fp_k": write_fp_k(tmp_path / "fpk"),
        "weights": write_weights(tmp_path / "weights"),
        "meta": write_meta_train(tmp_path / "meta"),
    }


def section(text: str, heading: str) -> str:
    return text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]


def figure_links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", text)


def assert_valid_pngs(out: Path, links: list[str]) -> None:
    for link in links:
        path = out / link
        assert path.is_file(), link
        assert path.stat().st_size > 5_000, link  # a real plot, not an empty canvas
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert min(image.size) > 200


def test_full_report(runs: dict[str, Path], tmp_path: Path):
    out = tmp_path / "report"
    path = write_report(list(runs.values()), out, title="Test report", notes="Images at 32 px, not 224.")
    assert path == out / "report.md"
    text = path.read_text()

    assert text.startswith("# Test report")
    assert "## Settings and departures from the paper\n\nImages at 32 px, not 224." in text
    assert "skipped:" not in text
    # Table 2: the label key names run a, the folder names run b; rows in the order given; best per column bold
    table2 = section(text, "## Evaluation (Table 2)")
    row_a = next(line for line in table2.splitlines() if line.startswith("| EfficientLab-3 meta |"))
    row_b = next(line for line in table2.splitlines() if line.startswith("| eval-b |"))
    assert table2.index(row_a) < table2.index(row_b)
    assert "| **76.45 ± 1.16 %** | 80.12 ± 0.87 % |" in row_a
    assert "| 70.00 ± 1.16 % | **81.23 ± 0.87 %** |" in row_b
    assert "70.12 [68.12, 72.12] %" in row_a  # class-pooled mIoU with its bootstrap interval
    assert "81.23 [80.23, 82.23] %" in row_a  # FB-IoU
    # results.json without a method (written before there were others) fine-tuned with U
    assert "| finetune (U) | 0.005 | 5 | 480 |" in row_a and "| finetune (U) | 0.01 | 5 | 480 |" in row_b
    # UHO: the chosen omega, the failed trial counted
    assert re.search(r"\| tune \| 5 \| 0\.004 \| 6 \| – \| 70\.00 % \| 3 \| 7 \| 1 \|", text)
    # FP-k: best initialization per k in bold
    assert "| meta | **55.00 ± 3.00 %** |" in text
    # weights: whole-network d1
    assert "| joint | 2.469 ± 0.05 | 40 |" in text
    # training: final and best validation mIoU
    assert "60 of 60" in text and "60.00 ± 3.00 % (10 tasks)" in text and "finished" in text

    links = figure_links(text)
    names = {Path(link).name for link in links}
    assert names == {"overlay-efficientlab-3-meta.png", "overlay-eval-b.png", "uho-tune.png", "fp-k-fpk.png",
                     "weights-weights.png", "weights-network-weights.png", "training-meta.png"}
    assert_valid_pngs(out, links)


def test_corrupt_run_is_skipped_and_the_rest_renders(runs: dict[str, Path], tmp_path: Path):
    bad = tmp_path / "bad-eval"
    bad.mkdir()
    (bad / "results.json").write_text('{"shots": {"1": ')
    no_overlay = runs["eval_b"]
    (no_overlay / "predictions.npz").write_bytes(b"not a zip")
    out = tmp_path / "report"
    text = write_report([runs["eval_a"], bad, no_overlay, tmp_path / "missing"], out).read_text()

    assert f"skipped: {bad}: results.json: not valid JSON" in text
    assert f"skipped: {tmp_path / 'missing'}: does not exist" in text
    assert f"skipped: {no_overlay}: predictions.npz: unreadable" in text
    assert "| EfficientLab-3 meta | **76.45 ± 1.16 %** |" in text  # run b still counts: only its overlay is lost
    assert "| eval-b | 70.00 ± 1.16 % | **81.23 ± 0.87 %** |" in text
    links = figure_links(text)
    assert [Path(link).name for link in links] == ["overlay-efficientlab-3-meta.png"]
    assert_valid_pngs(out, links)
    assert "## Update-hyperparameter optimisation" not in text  # absent kinds have no section


def write_joint_train(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"epochs": 2.0, "lr": 0.005}))
    rows = [{"iteration": 10 * i, "loss": 2.0 - 0.1 * i, "lr": 0.005 * (1 - i / 10), "epoch": i / 5}
            for i in range(1, 11)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "log.txt").write_text("2025-01-01 00:00:00 joint training from random\n")  # no `done:` line yet
    return folder


def test_parent_folder_is_searched_one_level_down(tmp_path: Path):
    parent = tmp_path / "runs"
    joint = write_joint_train(parent / "joint")
    both = write_joint_train(parent / "joint-and-eval")  # evaluate may write into a training run's folder
    write_evaluate(both, None, 0.5, 0.6, exist_ok=True)
    unfinished = parent / "tune-running"
    unfinished.mkdir()
    (unfinished / "study.db").write_bytes(b"")
    (parent / "notes").mkdir()  # a folder of something else is not a run, and not a problem
    text = write_report([parent], tmp_path / "out").read_text()

    assert f"| joint | training | `{joint}` |" in text
    assert f"| joint-and-eval | evaluate | `{both}` |" in text
    assert f"| joint-and-eval | training | `{both}` |" in text
    assert "| joint | joint-train (2 epochs) | 100 | 1.0000 | – | – | unfinished |" in text
    assert f"skipped: {unfinished}: study.db without trials.json" in text
    assert "notes" not in text
    links = figure_links(text)
    assert {Path(link).name for link in links} == {"overlay-joint-and-eval.png", "training-joint.png",
                                                   "training-joint-and-eval.png"}
    assert_valid_pngs(tmp_path / "out", links)


def test_a_folder_without_runs_is_refused_and_nothing_is_written(tmp_path: Path):
    from fewshotseg.errors import UserError

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no finished fewshotseg run") as refused:
        write_report([tmp_path / "empty"], tmp_path / "out")
    assert f"skipped: {tmp_path / 'empty'}: no run files here or one level down" in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_partial_files_are_reported_not_fatal(tmp_path: Path):
    tune = write_tune(tmp_path / "tune")
    (tune / "update_params.json").unlink()
    meta = write_meta_train(tmp_path / "meta")
    with (meta / "metrics.jsonl").open("a") as fh:
        fh.write('{"iteration": 61, "lo')  # a run killed mid-write
    text = write_report([tune, meta], tmp_path / "out").read_text()
    assert f"skipped: {tune}: update_params.json: missing; the best-ω row is derived from trials.json" in text
    assert f"skipped: {meta}: metrics.jsonl: 1 unreadable line(s) ignored" in text
    assert re.search(r"\| tune \| 5 \| 0\.004 \| 6 \|", text)  # trial 3 is also the best in trials.json
    assert_valid_pngs(tmp_path / "out", figure_links(text))


def test_no_run_folder_is_an_error(tmp_path: Path):
    with pytest.raises(ValueError, match="at least one run folder"):
        write_report([], tmp_path / "out")


def test_a_probe_run_shows_its_method_and_no_u(tmp_path: Path):
    """The probe ignores U: its row names the method and leaves lr and steps empty, though results.json holds the
    card's U; a fine-tuned run beside it keeps its U, and the two never merge into one row."""
    probe = write_evaluate(tmp_path / "eval-probe", "general", 0.45, 0.55, method=PROBE)
    tuned = {"method": "finetune", "settings": {"refine_eps": 0.001, "refine_radius": 0},
             "source": "finetune defaults", "given": True}
    finetune = write_evaluate(tmp_path / "eval-u", "general U", 0.30, 0.40, lr=0.02, method=tuned)
    text = write_report([probe, finetune], tmp_path / "out").read_text()
    table2 = section(text, "## Evaluation (Table 2)")
    header = next(line for line in table2.splitlines() if line.startswith("| Run |"))
    assert header.endswith("| method | lr | steps | task splits |")
    row = next(line for line in table2.splitlines() if line.startswith("| general |"))
    assert row.endswith("| probe (frozen-feature linear probe) | – | – | 480 |")
    assert "0.005" not in row
    u_row = next(line for line in table2.splitlines() if line.startswith("| general U |"))
    assert u_row.endswith("| finetune (U) | 0.02 | 5 | 480 |")
    details = next(line for line in table2.splitlines() if line.startswith("- **general**"))
    assert ("adapted with probe (features skip+deep, l2 0.003, self_train 2) (settings from card of general: chosen "
            "on validation classes); U not used") in details
    assert "lr" not in details
    u_details = next(line for line in table2.splitlines() if line.startswith("- **general U**"))
    assert "adapted by fine-tuning with U: lr 0.02, steps 5" in u_details and "given (--method finetune)" in u_details


def test_per_shot_folders_of_different_methods_stay_apart(tmp_path: Path):
    one = write_evaluate(tmp_path / "one", "general", 0.45, 0.55, method=PROBE)
    five = write_evaluate(tmp_path / "five", "general", 0.30, 0.40)  # no method recorded: fine-tuned with U
    for folder, drop in ((one, "5"), (five, "1")):
        results = json.loads((folder / "results.json").read_text())
        del results["shots"][drop]
        (folder / "results.json").write_text(json.dumps(results))
    text = write_report([tmp_path], tmp_path / "out").read_text()
    rows = [line for line in section(text, "## Evaluation (Table 2)").splitlines() if line.startswith("| general")]
    assert len(rows) == 2 and "merges the evaluations" not in text
    assert any("| probe (frozen-feature linear probe) | – | – |" in r for r in rows)
    assert any("| finetune (U) | 0.005 | 5 |" in r for r in rows)
