"""The quickstart pipeline at a tiny size, the built-in benchmark, and the command line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fewshotseg.cli import build_parser, main
from fewshotseg.data.synthetic import SyntheticSpec, class_list, make_synthetic


@pytest.mark.slow
def test_tiny_quickstart_end_to_end(tmp_path):
    from fewshotseg.quickstart import QuickstartConfig, quickstart, tiny

    report = quickstart(tiny(QuickstartConfig(out=str(tmp_path / "qs"))))
    text = report.read_text()
    for row in ("FOMAML*", "FOMAML* + UHO", "joint-trained", "joint-trained + UHO", "random init"):
        assert f"| {row} |" in text or f"| **{row}** |" in text, row
    assert "Settings and departures from the paper" in text
    figures = list((report.parent / "figures").glob("*.png"))
    assert len(figures) >= 5
    for link in [line.split("](")[1].split(")")[0] for line in text.splitlines() if "](figures/" in line]:
        assert (report.parent / link).is_file()
    runs = tmp_path / "qs" / "runs"
    assert (runs / "meta-fomaml-star" / "model.safetensors").is_file()
    assert json.loads((runs / "tune-fomaml-1shot" / "update_params.json").read_text())["shots"] == 1


def digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_built_in_benchmark_is_deterministic_per_seed(tmp_path):
    spec = SyntheticSpec(classes=6, pairs=3, size=32, seed=1)
    make_synthetic(tmp_path / "a", spec, progress=False)
    make_synthetic(tmp_path / "b", spec, progress=False)
    make_synthetic(tmp_path / "c", SyntheticSpec(classes=6, pairs=3, size=32, seed=2), progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_built_in_benchmark_defaults_and_layout(tiny_benchmark):
    assert SyntheticSpec().classes >= 1000 and SyntheticSpec().pairs == 10
    assert len({c.name for c in class_list(SyntheticSpec())}) == 1000
    splits = json.loads((tiny_benchmark / "splits.json").read_text())
    assert sum(len(v) for v in splits.values()) == 24
    assert not set(splits["train"]) & set(splits["test"]) and not set(splits["val"]) & set(splits["test"])
    folder = tiny_benchmark / splits["test"][0]
    image = np.asarray(Image.open(folder / "1.jpg"))
    mask = np.asarray(Image.open(folder / "1.png"))
    assert image.shape == (32, 32, 3) and set(np.unique(mask).tolist()) <= {0, 255}
    fg = (mask > 127).mean()
    assert 0.005 < fg < 0.5


def test_every_image_holds_distractors_of_other_classes():
    """What makes a task need its support set: other classes' objects, often differing in one attribute only."""
    from fewshotseg.data.synthetic import Renderer, _index_by_attributes, distractor_classes, render_pair

    spec = SyntheticSpec(classes=300, pairs=10, size=64, seed=3)
    classes = class_list(spec)
    renderer, index = Renderer(64), _index_by_attributes(classes)
    for n in range(10):
        image, mask, objects = render_pair(spec, classes, n, n, renderer, index, with_objects=True)
        assert np.array_equal(mask > 0, objects == 1)
        assert len(set(np.unique(objects).tolist()) - {0, 1}) >= 1  # at least one visible distractor
    rng = np.random.default_rng(0)
    target = classes[0]
    drawn = [c for _ in range(400) for c in distractor_classes(target, classes, 1, spec.hard_negative_rate, rng, index)]
    assert target not in drawn
    differ = [sum(a != b for a, b in zip((c.shape, c.colour, c.texture), (target.shape, target.colour, target.texture)))
              for c in drawn]
    assert 0.2 < np.mean([d == 1 for d in differ]) < 0.45  # hard negatives at about the configured 30 %


def test_every_verb_has_help():
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    expected = {"quickstart", "adapt", "make-synthetic", "prepare", "check-data", "model-info", "meta-train",
                "joint-train", "evaluate", "tune", "fp-k", "analyze-weights", "report"}
    assert expected <= set(verbs)
    for verb in expected:
        assert verbs[verb].format_help()


@pytest.mark.slow
def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "fewshotseg", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "fewshotseg" in out.stdout


def test_bad_input_gives_a_clear_error(tmp_path, capsys):
    code = main(["evaluate", "--init", "random", "--data", str(tmp_path / "missing"), "--run-dir", str(tmp_path / "r")])
    assert code == 2
    assert "missing" in capsys.readouterr().err


def test_the_program_manages_the_garbage_collector_and_main_from_python_leaves_it_alone():
    script = ("import gc, sys\n"
              "from fewshotseg.cli import main\n"
              "program = sys.argv[1] == 'program'\n"
              "sys.argv = ['fewshotseg', 'model-info', '--encoder', 'tinynet_e']\n"
              "main() if program else main(sys.argv[1:])\n"
              "print(gc.isenabled(), gc.get_freeze_count() > 0)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    seen = {}
    for how in ("program", "python"):
        done = subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        seen[how] = done.stdout.split()[-2:]
    assert seen["program"] == ["True", "True"]  # paused over the imports, enabled again, start-up objects frozen
    assert seen["python"] == ["True", "False"]  # a caller's process: nothing frozen
