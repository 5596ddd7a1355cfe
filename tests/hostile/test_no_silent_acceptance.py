"""Inputs that used to be accepted without a word: each is now refused with the reason, or done and reported."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

from .conftest import INIT_FLAGS, TINY, World
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


def test_a_skipped_support_pair_is_named_once_and_a_wrong_size_mask_by_its_file(world: World, tmp_path: Path, capfd,
                                                                                 caplog):
    from PIL import Image

    support = tmp_path / "support"
    shutil.copytree(world.support, support)
    (support / "broken.jpg").write_bytes(b"not a jpeg at all")
    Image.new("L", (32, 32), 255).save(support / "broken.png")
    argv = ["adapt", "--init", str(world.init), "--support", str(support), "--query", str(world.query), "--out",
            str(tmp_path / "out"), *AD]
    code, output = run_in_process(argv, capfd)
    assert code == 0 and "Traceback" not in output, output
    broken = support / "broken.jpg"
    reported = caplog.text  # (support problems are logged as warnings: stderr in the program)
    assert f"skipped: {broken}:" in reported and f"{broken}: {broken}" not in reported, reported
    Image.new("RGB", (32, 32), (200, 10, 10)).save(support / "small.jpg")  # a mask of another size: refused, named
    Image.new("L", (16, 16), 255).save(support / "small.png")
    code, output = run_in_process([*argv, "--overwrite"], capfd)
    assert code == 2 and "Traceback" not in output, output
    assert "16x16 px but the image is 32x32 px (the mask file small.png)" in output, output


def test_overwrite_leaves_only_this_runs_results(world: World, tmp_path: Path, capfd):
    """adapt on 2 queries, then --overwrite on 1 of them: the other's mask and overlay (the earlier adapt's, by its
    adapt.json) are removed and said; a file of the user's in --out is left alone."""
    out = tmp_path / "out"
    code, output = run_in_process(["adapt", "--init", str(world.init), "--support", str(world.support), "--query",
                                   str(world.query), "--out", str(out), *AD], capfd)
    assert code == 0, output
    first, second = sorted(world.query.glob("*.jpg"))
    (out / "notes.txt").write_text("mine\n")
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(first, one / first.name)
    code, output = run_in_process(["adapt", "--init", str(world.init), "--support", str(world.support), "--query",
                                   str(one), "--out", str(out), *AD, "--overwrite"], capfd)
    assert code == 0, output
    assert f"removed 2 file(s) of the earlier adapt in {out}" in output, output
    assert sorted(p.name for p in out.iterdir()) == sorted(["adapt.json", "notes.txt", f"{first.stem}_mask.png",
                                                            f"{first.stem}_overlay.png"])
    assert [q["query"] for q in json.loads((out / "adapt.json").read_text())["queries"]] == [str(one / first.name)]


def test_the_initializations_architecture_is_what_is_recorded(world: World, tmp_path: Path, capfd):
    """evaluate without --encoder: results.json and run.json record the initialization's encoder (tinynet_e), not
    the flag's default; a --size other than the initialization's wins, is said, and is what is recorded."""
    run = tmp_path / "run"
    code, output = run_in_process(["evaluate", "--init", str(world.init), "--data", str(world.data), "--run-dir",
                                   str(run), "--size", "64", "--shots", "1", "--u-steps", "1", "--max-tasks", "1",
                                   "--device", "cpu"], capfd)
    assert code == 0, output
    assert "running at 64 px (as given); the initialization was trained at 32 px" in output
    results = json.loads((run / "results.json").read_text())
    settings = json.loads((run / "run.json").read_text())["settings"]
    assert results["config"]["encoder"] == settings["encoder"] == "tinynet_e"
    assert results["size"] == results["config"]["size"] == 64


def test_several_initializations_say_which_flags_build_which(world: World, tmp_path: Path, capfd):
    """analyze-weights with a trained initialization (tinynet_e, 32 px) and a random one: --encoder builds the
    random one only (said, and recorded per initialization); --size 64 runs both at 64 px, the trained one's 32 px
    said."""
    run = tmp_path / "run"
    code, output = run_in_process(["analyze-weights", "--data", str(world.data), "--run-dir", str(run), "--init",
                                   f"a={world.init}", "--init", "b=random", "--encoder", "mobilenetv3_small_100",
                                   "--size", "64", "--shots", "1", "--num-splits", "1", "--max-tasks", "1",
                                   "--device", "cpu"], capfd)
    assert code == 0 and "Traceback" not in output, output
    assert "--encoder mobilenetv3_small_100 builds b only; a has encoder tinynet_e" in output, output
    assert "running every initialization at 64 px (as given); a was trained at 32 px" in output, output
    described = json.loads((run / "weight_summary.json").read_text())["inits"]
    assert "tinynet_e" in described["a"] and "random initialization" in described["b"], described


def test_resume_with_more_iterations_continues_to_them_and_the_card_says_what_ran(world: World, tmp_path: Path, capfd,
                                                                                  monkeypatch):
    """--iterations 4 with --resume on a finished 2-iteration run: 2 more meta-iterations, recorded in config.yaml,
    the checkpoint and the card, whose training record holds the first command and the resuming one."""
    import torch

    run = tmp_path / "run"
    shutil.copytree(world.init, run)
    flags = ["meta-train", "--data", str(world.data), "--run-dir", str(run), *TINY, "--eval-interval", "0",
             "--threads", "1", *INIT_FLAGS.replace("--iterations 2", "--iterations 4").split(), "--resume"]
    first = torch.load(world.init / "checkpoint.pt", weights_only=True)["commands"]
    monkeypatch.setattr(sys, "argv", ["fewshotseg", *flags])  # the command line the card records
    code, output = run_in_process(flags, capfd)
    assert code == 0, output
    assert "continuing to 4 meta-iterations (the run was for 2" in output
    assert "iterations: 4" in (run / "config.yaml").read_text()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 4 and state["config"]["iterations"] == 4 and state["requested_iterations"] == 4
    training = json.loads((run / "card.json").read_text())["training"]
    assert training["iterations"] == 4
    assert training["command"] == first[0] and training["resumed_with"] == [shlex.join(["fewshotseg", *flags])]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
