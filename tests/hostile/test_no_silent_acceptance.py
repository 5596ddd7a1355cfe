"""Inputs that used to be accepted without a word: each is now refused with the reason, or done and reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .conftest import World
from .test_hostile_inputs import run_in_process

AD = ["--size", "32", "--u-steps", "1", "--device", "cpu"]


def test_adapt_lists_what_the_query_folder_holds_besides_images(world: World, tmp_path: Path, capfd):
    query = tmp_path / "query"
    shutil.copytree(world.query, query)
    (query / "more").mkdir()
    shutil.copy(next(world.query.glob("*.jpg")), query / "more" / "hidden-from-adapt.jpg")
    (query / "notes.txt").write_text("where the photos came from\n")
    (query / "x_mask.png").write_bytes((next(world.support.glob("*.png"))).read_bytes())
    code, output = run_in_process(["adapt", "--init", str(world.init), "--support", str(world.support), "--query",
                                   str(query), "--out", str(tmp_path / "out"), *AD], capfd)
    assert code == 0 and "Traceback" not in output, output
    for name, why in (("more", "a folder"), ("notes.txt", "not a .jpg/.jpeg/.png image"), ("x_mask.png", "a mask")):
        assert f"skipped: {query / name}: {why}" in output, output
    summary = json.loads((tmp_path / "out" / "adapt.json").read_text())
    assert len(summary["skipped"]) == 3 and summary["failed"] == []
    assert len(summary["queries"]) == len(list(world.query.glob("*.jpg")))
