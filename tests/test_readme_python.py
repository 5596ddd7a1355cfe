"""The README's "Using fewshotseg from Python" section runs as written: its ```python blocks, in order, in one
namespace."""

from __future__ import annotations

import re

from conftest import REPO

SECTION = "## Using fewshotseg from Python"


def python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)


def test_readme_python_section_runs(capsys):
    blocks = python_blocks()
    assert len(blocks) >= 3
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "meta-iteration 1: inner loss" in out and "mean IoU" in out
    assert 0.0 <= namespace["result"].mean_iou <= 1.0 and namespace["result"].tasks == 2
    assert namespace["probs"].shape == (5, 32, 32)


def test_every_public_name_resolves_and_is_documented():
    import inspect

    import fewshotseg

    for name in fewshotseg.__all__:
        value = getattr(fewshotseg, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"fewshotseg.{name} has no docstring"
