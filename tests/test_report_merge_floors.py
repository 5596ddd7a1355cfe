"""`report` merges per-shot evaluations of one initialization into one row, and shows the floor rows."""

from __future__ import annotations

import json
from pathlib import Path

from fewshotseg.reports.report import write_report


def estimate(mean: float) -> dict:
    return {"mean": mean, "ci95": 0.01, "n": 4, "low": mean - 0.01, "high": mean + 0.01}


def write_eval(folder: Path, label: str, shots: str, mean: float, lr: float, floor: float) -> None:
    folder.mkdir(parents=True)
    summary = {"paper_miou": estimate(mean), "hsnet_miou": estimate(mean), "fb_iou": estimate(mean),
               "floors": {"all_foreground": {"paper_miou": estimate(floor), "hsnet_miou": estimate(floor),
                                             "fb_iou": estimate(floor)},
                          "support_rate": {"paper_miou": estimate(floor / 2), "hsnet_miou": estimate(floor / 2),
                                           "fb_iou": estimate(floor / 2)}}}
    (folder / "results.json").write_text(json.dumps({
        "label": label, "init": "runs/x", "data": "d", "protocol": "paper", "update_params": {"lr": lr, "steps": 3},
        "shots": {shots: summary}}))


def test_per_shot_folders_become_one_row_with_floors(tmp_path):
    write_eval(tmp_path / "fomaml-1shot", "FOMAML*", "1", 0.30, 0.01, 0.07)
    write_eval(tmp_path / "fomaml-5shot", "FOMAML*", "5", 0.35, 0.02, 0.08)
    write_eval(tmp_path / "random-1shot", "random init", "1", 0.10, 0.01, 0.07)
    report = write_report([tmp_path], tmp_path / "report").read_text()
    table = report[report.index("## Evaluation"):]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    fomaml = [r for r in rows if r.startswith("| FOMAML*")]
    assert len(fomaml) == 1  # one row for both shot counts
    assert "30.00 ± 1.00 %" in fomaml[0] and "35.00 ± 1.00 %" in fomaml[0] and "0.01 / 0.02" in fomaml[0]
    assert "merges the evaluations of one initialization across shot counts" in report
    floor_rows = [r for r in rows if r.startswith("| floor:")]
    assert len(floor_rows) == 2  # the same episodes: one pair of floor rows, not one per run
    assert "7.00 ± 1.00 %" in floor_rows[0] and "8.00 ± 1.00 %" in floor_rows[0] and "3.50" in floor_rows[1]
    assert "**30.00" in fomaml[0]  # the best row is a method, never a floor
