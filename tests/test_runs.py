"""Run plumbing: what a run folder records about its environment, and worker processes computing what the
inline path computes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import fewshotseg
from fewshotseg.runs.run_dir import RunDir


def test_config_records_versions_torch_build_command_and_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/bin/fewshotseg", "meta-train", "--data", "x"])
    RunDir(tmp_path).write_config({"seed": 3})
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["seed"] == 3
    env = saved["environment"]
    assert env["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert env["torch_build"]["cuda"] == torch.version.cuda
    assert env["command"] == ["fewshotseg", "meta-train", "--data", "x"]
    # the commit of the checkout holding the package (with +dirty for uncommitted changes), None where there is none
    package = Path(fewshotseg.__file__).parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True)
    if head.returncode != 0:
        assert env["git_commit"] is None
    else:
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", env["git_commit"])
        assert env["git_commit"].removesuffix("+dirty") == head.stdout.strip()
    assert not list(tmp_path.glob(".config.yaml.*"))  # written atomically, no temporary left behind


def test_git_commit_is_none_outside_a_checkout(tmp_path):
    from fewshotseg.runs.provenance import git_commit

    assert git_commit(tmp_path) is None


@pytest.mark.slow
def test_worker_pool_results_equal_inline_results(tiny_benchmark, tiny_dataset, tmp_path, one_torch_thread):
    from fewshotseg.evaluation.evaluate import episode_job
    from fewshotseg.evaluation.protocols import paper_episodes
    from fewshotseg.initializations.weights import write_for_workers
    from fewshotseg.meta_learning.update_routine import UpdateParams
    from fewshotseg.models.efficientlab import ModelConfig
    from fewshotseg.runs.workers import Pool

    init = tmp_path / "init.safetensors"
    write_for_workers("random", ModelConfig(variant="efficientlab-3", encoder="tinynet_e"), init, seed=0)
    episodes = paper_episodes(tiny_dataset, tiny_dataset.names[:3], 2, splits=2, seed=0)
    params = UpdateParams(lr=0.05, steps=2, dropout=0.2, aug_rate=0.5)  # random dropout and augmentation too
    jobs = [(str(init), str(tiny_benchmark), 32, ep, params, 0, False) for ep in episodes]
    def untimed(rows):  # each episode's wall-clock seconds differ from run to run; the results may not
        assert all(r["seconds"] > 0 for r in rows)
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    with Pool(1) as inline:
        expected = [untimed(rows) for rows, _ in inline.map(episode_job, jobs)]
    with Pool(2) as pool:
        got = [untimed(rows) for rows, _ in pool.map(episode_job, jobs)]
    assert got == expected
    assert len({round(r["iou"], 6) for rows in got for r in rows}) > 1  # not a constant that any path would give


def test_jsonl_reader_skips_a_torn_last_line_and_counts_unreadable_lines(tmp_path):
    """One reader for every JSONL a command writes: a killed write's torn last line is skipped (and counted, which
    reports show); an unreadable line before the last is an error naming the file and the line."""
    from fewshotseg.runs.run_dir import read_jsonl, scan_jsonl

    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(path) == [] and scan_jsonl(path) == ([], [])
    path.write_text('{"iteration": 1}\n\n{"iteration": 2}\n{"iter')
    assert read_jsonl(path) == [{"iteration": 1}, {"iteration": 2}]
    assert scan_jsonl(path) == ([{"iteration": 1}, {"iteration": 2}], [4])
    path.write_text('{"iteration": 1}\nnot json\n{"iteration": 3}\n')
    assert scan_jsonl(path) == ([{"iteration": 1}, {"iteration": 3}], [2])
    with pytest.raises(ValueError, match="metrics.jsonl: line 2 is not valid JSON"):
        read_jsonl(path)
