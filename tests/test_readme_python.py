"""The README's "Using fewshotseg from Python" section runs as written: its ```python blocks, in order, in one
namespace."""

from __future__ import annotations

import math
import re

import pytest

from conftest import REPO

SECTION = "## Using fewshotseg from Python"


def python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)


@pytest.mark.slow
def test_readme_python_section_runs(capsys):
    blocks = python_blocks()
    assert len(blocks) >= 3
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "meta-iteration 1: inner loss" in out and "mean IoU" in out
    # 2 classes x 1 split: the mean of the two split scores, and Student's t interval with 1 degree of freedom:
    # t(0.975, 1) * s / sqrt(2) with the sample sigma of two values, s = |a - b| / sqrt(2)
    result = namespace["result"]
    assert [c.name for c in result.classes] == namespace["dataset"].names[:2]
    (a,), (b,) = (c.split_ious for c in result.classes)
    assert result.tasks == 2 and [c.mean_iou for c in result.classes] == [a, b]
    assert result.mean_iou == pytest.approx((a + b) / 2)
    half = 12.706204736174707 * abs(a - b) / math.sqrt(2) / math.sqrt(2)
    assert result.interval == "t"
    assert (result.ci95_low, result.ci95_high) == pytest.approx(((a + b) / 2 - half, (a + b) / 2 + half))
    assert namespace["probs"].shape == (5, 32, 32)


def test_every_public_name_resolves_and_is_documented():
    import inspect

    import fewshotseg

    for name in fewshotseg.__all__:
        value = getattr(fewshotseg, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"fewshotseg.{name} has no docstring"
