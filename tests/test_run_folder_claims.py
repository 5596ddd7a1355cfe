"""Every command function claims its run folder itself, so a call from Python and the command line are one path:
the same lock, the same `run.json`, the same refusals (word for word) and the same continuation; `tune()` records
its result into the initialization's card either way.

Most tests here replace each command's work (its private body) by a stub that only checks the folder's lock is
held and writes one result file: what is tested is the claim around the work, in milliseconds."""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock, Timeout

from fewshotseg.cli import main
from fewshotseg.errors import RunFolderError
from fewshotseg.runs.run_dir import CONFIG, LOCK, MARKER


@dataclass
class Command:
    verb: str
    module: str  # where the command function and its body live
    function: str
    config: str  # the config dataclass's name in `module`
    values: dict[str, Any]  # a tiny config (run_dir and data added per test)
    flags: list[str]  # the same settings as flags (--run-dir and --data added per test)
    other: tuple[str, Any]  # a setting that changes the results: (field, value)
    returns: Any = None  # what the stubbed body returns
    free: list[str] = field(default_factory=list)  # flags of a setting the folder may be continued with

    def call(self, run_dir: Path, data: Path, *, overwrite: bool = False, **changes: Any) -> Any:
        module = importlib.import_module(self.module)
        cls = getattr(module, self.config)
        cfg = cls(**{**self.values, "run_dir": str(run_dir), "data": str(data), **changes})
        return getattr(module, self.function)(cfg, overwrite=overwrite)

    def argv(self, run_dir: Path, data: Path, *extra: str) -> list[str]:
        return [self.verb, *self.flags, "--data", str(data), "--run-dir", str(run_dir), *extra]


TINY = {"size": 32, "encoder": "tinynet_e"}
COMMANDS = [
    Command("meta-train", "fewshotseg.training.meta_train", "meta_train", "MetaTrainConfig", {**TINY, "iterations": 1},
            ["--size", "32", "--encoder", "tinynet_e", "--iterations", "1"], ("inner_lr", 0.01),
            free=["--iterations", "2"]),
    Command("joint-train", "fewshotseg.training.joint_train", "joint_train", "JointTrainConfig", {**TINY, "epochs": 0.01},
            ["--size", "32", "--encoder", "tinynet_e", "--epochs", "0.01"], ("lr", 0.01),
            free=["--checkpoint-interval", "7"]),
    Command("evaluate", "fewshotseg.evaluation.evaluate", "evaluate", "EvaluateConfig",
            {**TINY, "init": "random", "shots": [1]},
            ["--size", "32", "--encoder", "tinynet_e", "--init", "random", "--shots", "1"], ("seed", 1),
            returns={"shots": {}}, free=["--u-preset", "paper"]),
    Command("tune", "fewshotseg.tuning.uho", "tune", "TuneConfig", {**TINY, "init": "random", "trials": 1},
            ["--size", "32", "--encoder", "tinynet_e", "--init", "random", "--trials", "1"], ("shots", 1),
            returns={"update_params": {"lr": 0.01, "steps": 2}, "objective": 0.5, "trial": 0},
            free=["--trials", "3"]),
    Command("fp-k", "fewshotseg.evaluation.fp_k", "fp_k", "FPKConfig", {**TINY, "inits": ["random"]},
            ["--size", "32", "--encoder", "tinynet_e", "--init", "random"], ("repeats", 2), returns={}),
    Command("analyze-weights", "fewshotseg.evaluation.analyze_weights", "analyze_weights", "AnalyzeConfig",
            {**TINY, "inits": ["a=random"]}, ["--size", "32", "--encoder", "tinynet_e", "--init", "a=random"],
            ("shots", 2), returns={}),
]


@pytest.fixture
def stubbed(monkeypatch) -> Callable[[Command], list[Path]]:
    """Replace a command's work by a stub that checks the run folder is locked and writes config.yaml; the list
    of folders it ran in."""
    def stub(command: Command) -> list[Path]:
        ran: list[Path] = []

        def body(cfg, *args, **kwargs):
            folder = Path(cfg.run_dir)
            with pytest.raises(Timeout):  # held by the command for the whole of its work
                FileLock(folder / LOCK, timeout=0).acquire()
            (folder / CONFIG).write_text("stub: true\n")
            ran.append(folder)
            return command.returns if command.returns is not None else folder / "model.safetensors"

        monkeypatch.setattr(importlib.import_module(command.module), f"_{command.function}", body)
        return ran

    return stub


def cli_error(argv: list[str], capsys) -> str:
    """The message the command line prints for a refused command (exit code 2)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    prefix = f"fewshotseg {argv[0]}: error: "
    assert err.startswith(prefix), err
    return err.removeprefix(prefix).rstrip("\n")


@pytest.mark.parametrize("command", COMMANDS, ids=[c.verb for c in COMMANDS])
def test_python_and_cli_claim_a_run_folder_alike(command, stubbed, tmp_path, capsys):
    ran = stubbed(command)
    run, data = tmp_path / "run", tmp_path / "data"
    # Python: the folder is claimed (locked while the work runs, run.json names the command and its settings)
    command.call(run, data)
    marker = json.loads((run / MARKER).read_text())
    assert marker["command"] == command.verb
    assert marker["settings"]["data"] == str(data) and "run_dir" not in marker["settings"]
    # the command line with the same settings continues the folder Python wrote: the recorded settings are equal
    assert main(command.argv(run, data, *command.free)) == 0
    assert json.loads((run / MARKER).read_text()) == marker
    assert ran == [run, run]
    # other settings: refused by both, with the same message, before any work
    name, value = command.other
    with pytest.raises(RunFolderError) as refused:
        command.call(run, data, **{name: value})
    flag = "--" + name.replace("_", "-")
    assert cli_error(command.argv(run, data, flag, str(value)), capsys) == str(refused.value)
    assert f"a {command.verb} run with other settings" in str(refused.value) and "--overwrite" in str(refused.value)
    assert len(ran) == 2 and json.loads((run / MARKER).read_text()) == marker
    # overwrite=True and --overwrite replace the run in the folder alike
    command.call(run, data, overwrite=True, **{name: value})
    assert json.loads((run / MARKER).read_text())["settings"][name] == value
    assert main(command.argv(run, data, "--overwrite")) == 0
    assert json.loads((run / MARKER).read_text())["settings"] == marker["settings"]
    # a folder another process writes: refused by both, with the same message
    with FileLock(run / LOCK, timeout=0):
        with pytest.raises(RunFolderError, match="being written by another process") as locked:
            command.call(run, data, **{name: value})
        assert cli_error(command.argv(run, data, flag, str(value)), capsys) == str(locked.value)
    assert len(ran) == 4


@pytest.mark.parametrize("command", COMMANDS[:2], ids=[c.verb for c in COMMANDS[:2]])
def test_python_and_cli_refuse_to_resume_nothing_alike(command, stubbed, tmp_path, capsys):
    stubbed(command)
    module = importlib.import_module(command.module)
    cfg = getattr(module, command.config)(**{**command.values, "run_dir": str(tmp_path / "run"), "data": "d"})
    with pytest.raises(RunFolderError, match="nothing to resume") as refused:
        getattr(module, command.function)(cfg, resume=True)
    assert cli_error(command.argv(tmp_path / "run", Path("d"), "--resume"), capsys) == str(refused.value)
    assert not (tmp_path / "run").exists()  # a refused first claim leaves no trace


def test_an_evaluation_called_twice_from_python_appends_and_refuses_as_the_cli(tiny_benchmark, tmp_path, capsys):
    """Real work: the second call with the same settings resumes (no episode is run again), one with another seed
    is refused as the command line refuses it."""
    from fewshotseg.evaluation.evaluate import EvaluateConfig, evaluate

    run = tmp_path / "eval"
    cfg = EvaluateConfig(init="random", data=str(tiny_benchmark), run_dir=str(run), shots=[1], size=32,
                         encoder="tinynet_e", max_tasks=2, num_splits=1, update_params="", workers=1)
    u = {"u_steps": 1, "u_batch_size": 1}
    first = evaluate(cfg, u_overrides={"steps": 1, "batch_size": 1}, progress=False)
    again = evaluate(cfg, u_overrides={"steps": 1, "batch_size": 1}, progress=False)
    assert again["shots"] == first["shots"]
    assert "resuming; 2 of 2 episodes" in (run / "log.txt").read_text()
    assert json.loads((run / MARKER).read_text())["settings"]["u"]["1"]["steps"] == 1
    with pytest.raises(RunFolderError, match=r"seed: 0 -> 1") as refused:
        evaluate(replace(cfg, seed=1), u_overrides={"steps": 1, "batch_size": 1})
    argv = ["evaluate", "--init", "random", "--data", str(tiny_benchmark), "--run-dir", str(run), "--shots", "1",
            "--size", "32", "--encoder", "tinynet_e", "--max-tasks", "2", "--num-splits", "1", "--seed", "1",
            *[f"--{k.replace('_', '-')}={v}" for k, v in u.items()]]
    assert cli_error(argv, capsys) == str(refused.value)


@pytest.fixture
def two_inits(tmp_path) -> tuple[Path, Path]:
    """Two copies of one small initialization folder with a card (tinynet_e, 32 px)."""
    import torch

    from fewshotseg.initializations.card import Card
    from fewshotseg.models.efficientlab import ModelConfig
    from fewshotseg.segmenter import FewShotSegmenter

    torch.manual_seed(0)
    seg = FewShotSegmenter.from_pretrained("random", model_config=ModelConfig(encoder="tinynet_e"), size=32)
    seg.card = Card(name="tiny", model={}, size=32, update_params={"default": {"lr": 0.01, "steps": 2,
                                                                                "source": "test"}})
    a = seg.save_pretrained(tmp_path / "a")
    return a, Path(shutil.copytree(a, tmp_path / "b"))


def test_tune_from_python_records_its_result_in_the_card_as_the_cli_does(two_inits, tiny_benchmark, tmp_path):
    from fewshotseg.initializations.card import read_card
    from fewshotseg.tuning.uho import TuneConfig, tune

    a, b = two_inits
    values = dict(data=str(tiny_benchmark), trials=1, shots=1, max_steps=2, val_tasks=2, size=32)
    result = tune(TuneConfig(init=str(a), run_dir=str(tmp_path / "tune-a"), **values), progress=False)
    assert result["card"] == str(a)
    assert main(["tune", "--init", str(b), "--run-dir", str(tmp_path / "tune-b"),
                 *[f"--{k.replace('_', '-')}={v}" for k, v in values.items()]]) == 0
    from_python, from_cli = read_card(a), read_card(b)
    assert from_python is not None and from_cli is not None
    tuned = from_python.update_params["1"]
    assert {k: v for k, v in tuned.items() if k != "source"} == result["update_params"]
    assert tuned["source"] == f"tune: {tmp_path / 'tune-a'}/update_params.json"
    assert tuned == {**from_cli.update_params["1"], "source": tuned["source"]}
    assert [m["protocol"] for m in from_python.metrics] == [m["protocol"] for m in from_cli.metrics] == [
        "UHO objective (validation)"]
    assert (a / "README.md").read_text().count("tune: ") == 1  # the model card shows it too
