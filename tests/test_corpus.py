"""`fewshotseg make-corpus` from a tiny fake set of Debian packages, offline (`--debs`)."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs Debian's dpkg-deb")

ICON_PACKAGES = ("adwaita-icon-theme", "gnome-icon-theme", "faenza-icon-theme", "moka-icon-theme",
                 "lxde-icon-theme")  # five independent families
CONCEPTS = ("printer", "camera-photo", "drive-harddisk", "folder", "user-trash", "input-keyboard")


def _deb(root, folder, package: str, files: dict[str, Image.Image]) -> None:
    tree = root / "tree" / package
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\n"
                                             f"Maintainer: test <t@example.org>\nDescription: fake {package}\n")
    doc = tree / "usr/share/doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
                                   "\nFiles: *\nLicense: CC0-1.0\n")
    for rel, image in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(tree / rel)
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(tree), str(folder / f"{package}_1.0-1_all.deb")],
                   check=True, capture_output=True)


def _drawn(rng, shape: int, size: int = 64) -> Image.Image:
    """A flat-coloured drawing with alpha: shape `shape` in a random colour."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    colour = tuple(int(c) for c in rng.integers(0, 255, 3)) + (255,)
    box = (8, 8, size - 8, size - 8)
    if shape % 2:  # a full opaque rectangle would be refused (no shape to segment), so: a disk or a triangle
        d.ellipse(box, fill=colour)
    else:
        d.polygon([(32, 6), (58, 58), (6, 58)], fill=colour)
    return im


def _photo(rng, size: int = 64) -> Image.Image:
    """A shaded, noisy disk with alpha: smooth colour changes, as in a photograph."""
    yy, xx = np.mgrid[:size, :size]
    shade = (xx + yy) / (2 * size)
    rgb = np.stack([120 + 100 * shade, 80 + 60 * shade, 40 + 30 * (1 - shade)], -1) + rng.normal(0, 2, (size, size, 3))
    alpha = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 2.5) ** 2) * 255
    return Image.fromarray(np.dstack([rgb.clip(0, 255), alpha]).astype(np.uint8), "RGBA")


@pytest.fixture(scope="module")
def fake_debs(tmp_path_factory):
    root = tmp_path_factory.mktemp("debs")
    folder = root / "debs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for f, package in enumerate(ICON_PACKAGES):
        theme = f"Theme{f}"
        _deb(root, folder, package, {f"usr/share/icons/{theme}/48x48/devices/{name}.png": _drawn(rng, c + f)
                                     for c, name in enumerate(CONCEPTS)}
             | {f"usr/share/icons/{theme}/48x48/mimetypes/text-plain.png": _drawn(rng, 0),
                f"usr/share/icons/{theme}/48x48/apps/firefox.png": _drawn(rng, 1)})
    stamps = {}
    for cat in ("fruit", "birds"):
        for k in range(4):
            stamps[f"usr/share/tuxpaint/stamps/{cat}/{k}.png"] = _photo(rng)
    _deb(root, folder, "tuxpaint-stamps-default", stamps)
    backgrounds = {f"usr/share/backgrounds/bg{k}.jpg": Image.fromarray(
        rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)).convert("RGB") for k in range(3)}
    _deb(root, folder, "lomiri-wallpapers-16.04", backgrounds)
    return folder


PACKAGES = ",".join((*ICON_PACKAGES, "tuxpaint-stamps-default", "lomiri-wallpapers-16.04"))


def _build(fake_debs, out, cache, seed=0):
    from fewshotseg.cli import main

    return main(["make-corpus", "--out", str(out), "--debs", str(fake_debs), "--cache", str(cache),
                 "--packages", PACKAGES, "--size", "64", "--pairs", "4", "--seed", str(seed)])


def test_a_corpus_builds_offline_with_splits_and_provenance(fake_debs, tmp_path):
    assert _build(fake_debs, tmp_path / "c", tmp_path / "cache") == 0
    out = tmp_path / "c"
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(splits["test"]) == ["photo-birds", "photo-fruit"]  # the photographs are the held-out classes
    icons = sorted(splits["train"] + splits["val"])
    assert icons == sorted(f"icon-{c}" for c in CONCEPTS)  # mimetypes and app logos left out
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert {s["package"] for s in manifest["sources"]} == set(PACKAGES.split(","))
    assert all(s["version"] == "1.0-1" and s["licences"] == ["CC0-1.0"] for s in manifest["sources"])
    assert len(manifest["images"]) == 4 * len(icons + splits["test"])
    for record in manifest["images"]:
        image = Image.open(out / record["file"])
        mask = np.asarray(Image.open(out / record["file"].replace(".jpg", ".png")))
        assert image.size == (64, 64) and set(np.unique(mask)) <= {0, 255} and mask.any()
        assert record["background"].startswith("lomiri-wallpapers-16.04:usr/share/backgrounds/")
        split = record["split"]
        for d in record["distractors"]:  # distractors come from the image's own split
            owner = next(c for c in manifest["classes"] if _made_of(c, d["object"]))
            assert manifest["classes"][owner]["split"] == split


def _made_of(name: str, provenance: str) -> bool:
    kind, _, rest = name.partition("-")
    return provenance.endswith(f"/{rest}.png") if kind == "icon" else f"/{rest}/" in provenance


def test_the_same_seed_gives_the_same_corpus_and_existing_output_is_kept(fake_debs, tmp_path, capsys):
    assert _build(fake_debs, tmp_path / "a", tmp_path / "cache") == 0
    assert _build(fake_debs, tmp_path / "b", tmp_path / "cache") == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    before = (tmp_path / "a" / "MANIFEST.json").read_bytes()
    assert _build(fake_debs, tmp_path / "a", tmp_path / "cache", seed=1) == 2  # not empty: refused
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "a" / "MANIFEST.json").read_bytes() == before


def test_a_missing_source_package_names_the_command_that_fetches_it(fake_debs, tmp_path, capsys):
    partial = tmp_path / "debs"
    shutil.copytree(fake_debs, partial)
    (partial / "tuxpaint-stamps-default_1.0-1_all.deb").unlink()
    assert _build(partial, tmp_path / "c", tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert "apt-get download tuxpaint-stamps-default" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()
