"""Nothing is lost: `evaluate` and `tune` killed mid-way (SIGKILL) and run again end with an uninterrupted run's
numbers; a truncated latest checkpoint falls back to the previous one; an internal error leaves a crash log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import World

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """The killed runs are single-threaded subprocesses; the in-process runs compared with them must be too."""


def kill_when(argv: list[str], ready, limit: float = 240) -> bool:
    """Start `fewshotseg argv`, SIGKILL it as soon as ready() is true; False if it finished first."""
    child = subprocess.Popen([sys.executable, "-m", "fewshotseg", *argv], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if ready():
                child.send_signal(signal.SIGKILL)
                child.wait()
                return True
            time.sleep(0.05)
        assert child.poll() is not None, f"no progress within {limit} s"
        return False
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
def test_evaluate_killed_and_resumed_equals_an_uninterrupted_run(world: World, tmp_path: Path):
    from fewshotseg.cli import main

    args = ["evaluate", "--init", str(world.init), "--data", str(world.data), "--size", "32", "--device", "cpu",
            "--shots", "1", "2", "--num-splits", "3", "--u-steps", "1", "--u-batch-size", "2"]
    assert main([*args, "--run-dir", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"
    # Killed after its first episode (5 query rows) is on disk, with more to come.
    assert kill_when([*args, "--run-dir", str(killed)], lambda: lines(killed / "episodes.jsonl") >= 5)
    assert not (killed / "results.json").exists()
    done_before = lines(killed / "episodes.jsonl")
    assert main([*args, "--run-dir", str(killed)]) == 0
    whole = untimed(json.loads((tmp_path / "whole" / "results.json").read_text()))
    resumed = untimed(json.loads((killed / "results.json").read_text()))
    assert resumed["shots"] == whole["shots"]
    rows = lambda p: sorted(json.dumps(untimed(json.loads(line)), sort_keys=True)  # noqa: E731
                            for line in (p / "episodes.jsonl").read_text().splitlines())
    assert rows(killed) == rows(tmp_path / "whole")  # no episode twice, none missing
    assert done_before < lines(killed / "episodes.jsonl")
    # A second run with the same settings appends nothing and writes the same numbers.
    assert main([*args, "--run-dir", str(killed)]) == 0
    assert untimed(json.loads((killed / "results.json").read_text()))["shots"] == whole["shots"]
    assert rows(killed) == rows(tmp_path / "whole")


def untimed(value):
    """`value` without its wall-clock measurements (each episode's seconds), which no two runs share."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in ("seconds", "seconds_per_episode")}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


@pytest.mark.slow
def test_tune_killed_and_resumed_equals_an_uninterrupted_run(world: World, tmp_path: Path):
    import optuna

    from fewshotseg.cli import main

    args = ["tune", "--init", str(world.init), "--data", str(world.data), "--size", "32", "--device", "cpu",
            "--shots", "1", "--trials", "4", "--max-steps", "2", "--patience", "2", "--val-tasks", "2"]
    assert main([*args, "--run-dir", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"

    def one_trial_done() -> bool:
        if not (killed / "study.db").exists():
            return False
        try:
            study = optuna.load_study(study_name="uho", storage=f"sqlite:///{killed / 'study.db'}")
            return len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) >= 1
        except Exception:  # the schema is being created
            return False

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert kill_when([*args, "--run-dir", str(killed)], one_trial_done)
    assert main([*args, "--run-dir", str(killed)]) == 0
    whole = json.loads((tmp_path / "whole" / "update_params.json").read_text())
    resumed = json.loads((killed / "update_params.json").read_text())
    assert resumed["update_params"] == whole["update_params"]
    assert resumed["objective"] == pytest.approx(whole["objective"], abs=1e-12)


@pytest.mark.slow
def test_a_truncated_latest_checkpoint_falls_back_to_the_previous(world: World, tmp_path: Path, capfd):
    import shutil

    from fewshotseg.cli import main

    from .conftest import INIT_FLAGS, TINY

    run = tmp_path / "run"
    shutil.copytree(world.init, run)
    assert (run / "checkpoint.prev.pt").exists()  # checkpoints every iteration: the last two are kept
    blob = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(blob[: len(blob) // 3])
    flags = ["--data", str(world.data), "--run-dir", str(run), *TINY, *INIT_FLAGS.split(), "--eval-interval", "0"]
    capfd.readouterr()
    assert main(["meta-train", *flags, "--resume"]) == 0
    err = capfd.readouterr().err
    assert "falling back to the previous checkpoint" in err and "checkpoint.prev.pt" in err
    assert "resuming from" in err and "iteration 1" in err


def test_an_internal_error_prints_one_line_and_writes_a_crash_log(tmp_path: Path, capfd, monkeypatch):
    from fewshotseg import cli

    def broken(args):
        raise KeyError("an internal slip")

    monkeypatch.setitem(cli.VERBS, "model-info", (cli.VERBS["model-info"][0], broken))
    assert cli.main(["model-info"]) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err and "internal error: KeyError" in err
    log = Path(err.split("the full traceback is in ")[1].split(";")[0])
    assert "Traceback" in log.read_text() and "an internal slip" in log.read_text()
    log.unlink()
    with pytest.raises(KeyError):  # --debug shows the traceback instead
        cli.main(["model-info", "--debug"])
