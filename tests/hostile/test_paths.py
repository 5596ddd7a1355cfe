"""Paths as users type them: relative to the current folder, `~` for the home folder (quoted, so the shell leaves
it alone, or after `file:` / inside a config file), and folders whose names hold spaces, in every command that
takes a path: adapt, evaluate and tune --init, --update-params, --splits file:, --config, report and serve --init."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import World
from .test_hostile_inputs import run_in_process

TINY = ["--size", "32", "--device", "cpu"]


@pytest.fixture
def home(world: World, tmp_path: Path, monkeypatch) -> Path:
    """A home folder whose path holds a space, as the current folder, with the world's files under names with
    spaces."""
    home = tmp_path / "my home"
    home.mkdir()
    shutil.copytree(world.init, home / "my init")
    shutil.copytree(world.data, home / "my data", ignore=shutil.ignore_patterns(".fewshotseg-cache"))
    shutil.copytree(world.support, home / "my support")
    shutil.copytree(world.query, home / "my images")
    shutil.copy(world.params, home / "u p.json")
    splits = json.loads((world.data / "splits.json").read_text())
    (home / "my splits.json").write_text(json.dumps(splits))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    return home


def run(argv: list[str], capfd) -> str:
    code, output = run_in_process(argv, capfd)
    assert code == 0, f"fewshotseg {' '.join(argv)}\nexit code {code}; output:\n{output}"
    assert "Traceback" not in output, output
    return output


def no_tilde_folder(home: Path) -> None:
    """`~` was expanded, not taken as a folder named `~` in the current folder."""
    assert not (home / "~").exists(), sorted(p.name for p in home.iterdir())


def test_evaluate_tune_and_report_take_relative_home_and_spaced_paths(home: Path, capfd):
    (home / "cfg dir").mkdir()
    # a config file naming paths too: relative to the current folder, and with `~`
    (home / "cfg dir" / "ev.yaml").write_text("data: my data\nupdate_params: ~/u p.json\nmax_tasks: 2\n")
    run(["evaluate", "--config", "cfg dir/ev.yaml", "--init", "~/my init", "--run-dir", "~/ev run",
         "--splits", "file:~/my splits.json", "--shots", "1", *TINY], capfd)
    results = json.loads((home / "ev run" / "results.json").read_text())
    assert results["tasks"] == 2 and results["update_params_per_shot"]["1"]["lr"] == 0.01
    assert str(home / "u p.json") in results["update_params_per_shot"]["1"]["source"]

    run(["tune", "--init", "my init", "--data", "~/my data", "--run-dir", "tu run", "--splits", "file:my splits.json",
         "--update-params", "~/u p.json", "--trials", "1", "--max-steps", "2", "--val-tasks", "1", "--shots", "1",
         *TINY], capfd)
    assert (home / "tu run" / "update_params.json").is_file()
    card = json.loads((home / "my init" / "card.json").read_text())
    assert "1" in card["update_params"]  # recorded in the card of the initialization found by its relative path

    out = run(["report", "~/ev run", "tu run", "--out", "~/my report"], capfd)
    assert (home / "my report" / "report.md").is_file(), out
    no_tilde_folder(home)


def test_adapt_takes_relative_home_and_spaced_paths(home: Path, capfd):
    out = run(["adapt", "--init", "my init", "--support", "~/my support", "--query", "my images", "--out",
               "~/my masks", "--update-params", "u p.json", "--u-steps", "1", *TINY], capfd)
    queries = sorted(p.stem for p in (home / "my images").glob("*.jpg"))
    assert sorted(p.name for p in (home / "my masks").glob("*_mask.png")) == [f"{q}_mask.png" for q in queries], out
    summary = json.loads((home / "my masks" / "adapt.json").read_text())
    assert summary["failed"] == [] and summary["support_pairs"] == len(list((home / "my support").glob("*.jpg")))
    no_tilde_folder(home)


def test_a_run_folders_config_yaml_is_a_config_file(home: Path, capfd):
    """`--config RUN/config.yaml` starts a new run with a finished run's settings (its `environment` record is not a
    setting)."""
    run(["meta-train", "--config", "~/my init/config.yaml", "--run-dir", "again", "--data", "my data",
         "--iterations", "1", "--eval-interval", "0", "--threads", "1"], capfd)
    assert (home / "again" / "model.safetensors").is_file()


def test_serve_takes_relative_and_home_paths(home: Path, capfd, monkeypatch):
    pytest.importorskip("gradio")
    import fewshotseg.app.serve as serve_module

    seen = {}
    monkeypatch.setattr(serve_module, "serve", lambda options, **_: seen.setdefault("options", options))
    run(["serve", "--init", "~/my init", "--init", "my init"], capfd)
    inits = seen["options"].inits
    assert inits == [str(home / "my init"), "my init"]
    loaded = serve_module.load_initializations(inits, "cpu")
    assert len(loaded) == 2 and loaded[0].label == "my init"
