"""The public API as a user's tools see it: every exported name documented, and typed for mypy."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import fewshotseg

REPO = Path(__file__).resolve().parents[1]


def test_every_exported_name_has_its_own_docstring():
    undocumented = []
    for name in fewshotseg.__all__:
        obj = getattr(fewshotseg, name)
        if name == "__version__" or not callable(obj):
            continue
        own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        if not own or own.startswith(f"{name}("):  # a dataclass's generated signature is not documentation
            undocumented.append(name)
    assert not undocumented


@pytest.mark.slow
def test_mypy_types_a_users_script_through_the_package_root(tmp_path):
    pytest.importorskip("mypy")
    script = tmp_path / "user.py"
    script.write_text(
        "from fewshotseg import FewShotSegmenter, MethodSpec, Prediction, UpdateParams\n"
        "seg: FewShotSegmenter = FewShotSegmenter.from_pretrained('general')\n"
        "size: int = seg.size\n"
        "spec: MethodSpec = MethodSpec.of('probe')\n"
        "params = UpdateParams(lr=0.01)\n"
        "preds: list[Prediction] = seg.predict([])\n"
        "wrong: str = seg.size  # a typed root makes this an error; an untyped one (Any) would let it pass\n")
    run = subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports", "--follow-imports=silent",
                          "--no-incremental", str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "user.py:7:" in errors[0] and '"int"' in errors[0], run.stdout
