"""The README's practitioner commands run exactly as printed.

Every shell block of the practitioner sections ("Segmenting your own images", with `serve`'s start, and "How well it
does on your own objects", with `evaluate` and `report`) is read from README.md, so an edited README is what is
tested, and run with bash in a fresh working folder (its name holds a space) that holds only the files the text
tells the user to make: support pairs and query images copied from the real-photo fixtures, a folder of labelled
classes and the split file the README shows. No path is made absolute and no `--init` is added: the commands use
the shipped general initialization, as a new user's would. `serve` is started, asked for its page on the address the
README gives, and stopped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import REAL_PHOTOS, REPO

OWN_IMAGES = "## Segmenting your own images"
OWN_OBJECTS = "### How well it does on your own objects"
SHELL = ("bash", "sh", "shell", "console")
COMMAND_LIMIT = 600  # seconds for one block: far above the ~15 s each takes, far below "forever"
SERVE_LIMIT = 240  # seconds until `serve` answers (importing Gradio and loading the initialization included)


def section(heading: str) -> str:
    """The README's text under `heading`, up to the next heading of the same or a higher level."""
    text = (REPO / "README.md").read_text()
    assert f"\n{heading}\n" in text, f"README.md has no section {heading!r}"
    body = text.split(f"\n{heading}\n", 1)[1]
    level = heading.split(" ", 1)[0]
    ends = [m.start() for m in re.finditer(rf"^#{{2,{len(level)}}} ", body, flags=re.M)]
    return body[: ends[0]] if ends else body


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block of `text`, in order."""
    blocks, lang, body = [], None, []
    for line in text.splitlines(keepends=True):
        if lang is None and line.startswith("```"):
            lang, body = line[3:].strip(), []
        elif lang is not None and line.rstrip() == "```":
            blocks.append((lang, "".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def shell_blocks(heading: str) -> list[str]:
    return [body for lang, body in fenced_blocks(section(heading)) if lang in SHELL]


def commands(block: str) -> list[str]:
    """The commands of a block: continuation lines joined, comments and blank lines left out."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def user_env(home: Path) -> dict[str, str]:
    """A new user's shell: the installed `fewshotseg` first on PATH, a fresh home folder, no hub downloads."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "fewshotseg").exists():
        pytest.fail(f"no fewshotseg command beside {sys.executable}; install the package (pip install -e .)")
    home.mkdir(parents=True, exist_ok=True)
    return os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(home),
                         "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_block(block: str, cwd: Path, env: dict[str, str]) -> str:
    try:
        done = subprocess.run(["bash", "-e", "-c", block], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=COMMAND_LIMIT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no answer within {COMMAND_LIMIT} s in {cwd}:\n{block}")
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"README block failed (exit {done.returncode}) in {cwd}:\n{block}\n{output}"
    assert "Traceback" not in output, output
    return output


def labelled_variants(folder: Path):
    """(image, mask) PIL pairs of one fixture class: the photos, then mirrored, flipped and turned copies."""
    from PIL import Image, ImageOps

    turns = (lambda im: im, ImageOps.mirror, ImageOps.flip, lambda im: im.rotate(180))
    for turn in turns:
        for jpg in sorted(folder.glob("*.jpg"), key=lambda p: int(p.stem)):
            with Image.open(jpg) as image, Image.open(jpg.with_suffix(".png")) as mask:
                yield turn(image.convert("RGB")), turn(mask)


# --- the files each section tells the user to make ---------------------------------------------------------------


def make_support_and_queries(work: Path) -> tuple[list[str], list[str]]:
    """my_support/ with a.jpg + a_mask.png, b.jpg + b_mask.png, c.jpg + c_mask.png; my_images/ with two photos of
    the same object; both from the FSS-1000 example photos of the fixtures."""
    import shutil

    photos = REAL_PHOTOS / "eiffel_tower"
    (work / "my_support").mkdir()
    (work / "my_images").mkdir()
    support = ["a", "b", "c"]
    for name, n in zip(support, (1, 2, 3)):
        shutil.copy(photos / f"{n}.jpg", work / "my_support" / f"{name}.jpg")
        shutil.copy(photos / f"{n}.png", work / "my_support" / f"{name}_mask.png")
    queries = ["4", "5"]
    for n in queries:
        shutil.copy(photos / f"{n}.jpg", work / "my_images" / f"{n}.jpg")
    return support, queries


def make_scenes(work: Path) -> list[str]:
    """my_scenes/ with scene1.jpg + scene1.duck.png + scene1.cat.png, ...: a duck toy photo and a cat photo of the
    fixtures side by side, each object's mask its own file (the third scene shows the duck only); the classes."""
    import numpy as np
    from PIL import Image

    (work / "my_scenes").mkdir()
    for n in (1, 2, 3):
        photos = [REAL_PHOTOS / c / f"{n}.jpg" for c in ("duck_toy", "cat")][: 1 if n == 3 else 2]
        images = [np.asarray(Image.open(p).convert("RGB").resize((320, 320))) for p in photos]
        Image.fromarray(np.concatenate(images, 1)).save(work / "my_scenes" / f"scene{n}.jpg", quality=90)
        for k, (name, photo) in enumerate(zip(("duck", "cat"), photos)):
            halves = [np.zeros((320, 320), np.uint8) for _ in photos]
            halves[k] = (np.asarray(Image.open(photo.with_suffix(".png")).resize((320, 320), Image.Resampling.NEAREST)) > 0)
            Image.fromarray(np.concatenate(halves, 1).astype(np.uint8) * 255).save(
                work / "my_scenes" / f"scene{n}.{name}.png")
    return ["cat", "duck"]


def make_classes(work: Path, text: str, shots: int) -> list[str]:
    """my_classes/<class>/<n>.jpg + <n>.png (shots + 5 pairs each) for the classes of the split file the README
    shows, and that file, my_splits.json, as the README writes it."""
    shown = re.search(r"`my_splits\.json`[^`]*`(\{.*?\})`", text, flags=re.S)
    assert shown, "the section no longer shows the content of my_splits.json"
    (work / "my_splits.json").write_text(shown.group(1))
    classes = json.loads(shown.group(1))["test"]
    fixtures = sorted(p for p in REAL_PHOTOS.iterdir() if p.is_dir())
    for cls, fixture in zip(classes, fixtures, strict=False):
        folder = work / "my_classes" / cls
        folder.mkdir(parents=True)
        for n, (image, mask) in enumerate(labelled_variants(fixture), start=1):
            if n > shots + 5:
                break
            image.save(folder / f"{n}.jpg", quality=90)
            mask.save(folder / f"{n}.png")
    assert len(classes) <= len(fixtures)
    return classes


# --- the tests --------------------------------------------------------------------------------------------------


def test_the_practitioner_sections_hold_runnable_commands():
    """Every shell block is a command a user can paste: no synopsis ([--flag], FILE placeholders, ...)."""
    blocks = shell_blocks(OWN_IMAGES) + shell_blocks(OWN_OBJECTS)
    found = [c for b in blocks for c in commands(b)]
    assert any(c.startswith("fewshotseg adapt ") for c in found), found
    assert any(c.startswith("fewshotseg serve") for c in found), found
    assert any(c.startswith("fewshotseg evaluate ") for c in found), found
    assert any(c.startswith("fewshotseg report ") for c in found), found
    for command in found:
        words = shlex.split(command)
        assert words[0] == "fewshotseg", f"a practitioner block runs something else than fewshotseg: {command}"
        placeholders = [w for w in words if re.search(r"^\[|\]$|^<.*>$|\.\.\.|^[A-Z][A-Z_:]+$", w)]
        assert not placeholders, f"{command!r} is a synopsis, not a command ({placeholders}); write it in the text"


@pytest.mark.slow
def test_segmenting_your_own_images_runs_as_printed(tmp_path: Path):
    text = section(OWN_IMAGES)
    blocks = [b for b in shell_blocks(OWN_IMAGES) if "fewshotseg serve" not in b]
    assert blocks
    work = tmp_path / "work folder"
    work.mkdir()
    support, queries = make_support_and_queries(work)
    classes = make_scenes(work) if "my_scenes/" in text else []
    env = user_env(tmp_path / "home")
    outputs = [run_block(block, work, env) for block in blocks]
    adapt = next(o for b, o in zip(blocks, outputs) if "fewshotseg adapt" in b)
    # What adapt wrote, where the README says: a mask and an overlay per query image, and adapt.json.
    out = work / "masks"
    for q in queries:
        assert (out / f"{q}_mask.png").is_file() and (out / f"{q}_overlay.png").is_file(), sorted(os.listdir(out))
    summary = json.loads((out / "adapt.json").read_text())
    assert summary["support_pairs"] == len(support) and summary["failed"] == []
    if classes:  # several objects at once: an indexed PNG per query, the classes named beside them
        from PIL import Image

        scenes = work / "scene_masks"
        assert (scenes / "classes.txt").read_text().split() == classes
        for q in queries:
            with Image.open(scenes / f"{q}_mask.png") as im:
                assert im.mode == "P" and set(np.unique(np.asarray(im)).tolist()) <= {0, 1, 2}
        coco = json.loads((work / "scene_labels" / "coco.json").read_text())
        assert [c["name"] for c in coco["categories"]] == classes
    # The README's example of what adapt prints (`...` stands for anything) is what it prints.
    example = next(body for lang, body in fenced_blocks(text) if not lang and body.startswith("adapting "))
    for line in example.splitlines():
        pattern = ".*?".join(re.escape(part) for part in line.split("..."))
        assert re.search(pattern, adapt), f"the README's example line\n  {line}\nis not printed:\n{adapt}"


@pytest.mark.slow
def test_how_well_it_does_on_your_own_objects_runs_as_printed(tmp_path: Path):
    text = section(OWN_OBJECTS)
    blocks = shell_blocks(OWN_OBJECTS)
    assert blocks
    shots = max(int(k) for b in blocks for k in re.findall(r"--shots ((?:\d+ ?)+)", b)[0].split()) if any(
        "--shots" in b for b in blocks) else 5
    work = tmp_path / "work folder"
    work.mkdir()
    classes = make_classes(work, text, shots)
    env = user_env(tmp_path / "home")
    for block in blocks:
        run_block(block, work, env)
    results = sorted(work.rglob("results.json"))
    assert len(results) == 1, results
    evaluated = json.loads(results[0].read_text())
    assert evaluated["tasks"] == len(classes) and str(shots) in evaluated["shots"]
    report = sorted(work.rglob("report.md"))
    assert len(report) == 1 and results[0].parent.name in report[0].read_text()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


@pytest.mark.slow
def test_serve_starts_as_printed(tmp_path: Path):
    pytest.importorskip("gradio")
    text = section(OWN_IMAGES)
    (block,) = [b for b in shell_blocks(OWN_IMAGES) if "fewshotseg serve" in b]
    url = re.search(r"then open <(http://[^>]+)>", text.split(block, 1)[1])
    assert url, "the README no longer says which address to open after `fewshotseg serve`"
    url = url.group(1)
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()
    assert host == "127.0.0.1", "serve's printed start must stay on loopback"
    waited = time.monotonic()
    while not _port_free(host, int(port)):
        if time.monotonic() - waited > 60:
            pytest.skip(f"{host}:{port} is taken by another program; the printed command cannot listen there")
        time.sleep(2)
    work = tmp_path / "work folder"
    work.mkdir()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(["bash", "-e", "-c", block], cwd=work, env=user_env(tmp_path / "home"), stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        started = time.monotonic()
        page = ""
        while time.monotonic() - started < SERVE_LIMIT:
            assert server.poll() is None, f"serve stopped (exit {server.returncode}):\n" + (
                tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(url, timeout=10) as answer:
                    page = answer.read().decode(errors="replace")
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        assert page, f"{url} did not answer within {SERVE_LIMIT} s:\n" + (tmp_path / "serve.log").read_text()
        assert "<title>fewshotseg</title>" in page or "fewshotseg" in page
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)  # Ctrl-C, as the README says
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
        log.close()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
