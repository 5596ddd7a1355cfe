"""`fewshotseg make-corpus` from a tiny fake set of Debian packages, offline (`--debs`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs Debian's dpkg-deb")

ICON_PACKAGES = ("adwaita-icon-theme", "gnome-icon-theme", "faenza-icon-theme", "moka-icon-theme",
                 "lxde-icon-theme")  # five independent families
CONCEPTS = ("printer", "camera-photo", "drive-harddisk", "folder", "user-trash", "input-keyboard", "fish")
N_BACKGROUNDS = 10


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
    for cat in ("food/fruit", "animals/birds", "animals/fish"):  # three real-photo classes
        for k in range(4):
            stamps[f"usr/share/tuxpaint/stamps/{cat}/{k}.png"] = _photo(rng)
    for cat in ("food/fruit", "vehicles"):  # drawings: one beside fruit photographs, one on its own
        for k in range(4):
            stamps[f"usr/share/tuxpaint/stamps/{cat}/d{k}.png"] = _drawn(rng, k)
    _deb(root, folder, "tuxpaint-stamps-default", stamps)
    clipart = {f"usr/share/openclipart/png/{cat}/{k}.png": _drawn(rng, k)
               for cat in ("food/fruits", "animals/birds/parrots", "buildings/homes") for k in range(4)}
    clipart |= {f"usr/share/openclipart/png/decorations/{name}.png": _drawn(rng, k)  # a file's name ties it
                for k, name in enumerate(("garland", "golden_fish_bowl_01", "lamp", "vase"))}
    _deb(root, folder, "openclipart-png", clipart)
    backgrounds = {f"usr/share/backgrounds/bg{k}.jpg": Image.fromarray(
        rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)).convert("RGB") for k in range(N_BACKGROUNDS)}
    _deb(root, folder, "lomiri-wallpapers-16.04", backgrounds)
    return folder


PACKAGES = ",".join((*ICON_PACKAGES, "openclipart-png", "tuxpaint-stamps-default", "lomiri-wallpapers-16.04"))
SPLITS = ("train", "val", "test")
PHOTOS = ["photo-animals-birds", "photo-animals-fish", "photo-food-fruit"]


def _build(fake_debs, out, cache, seed=0):
    from fewshotseg.cli import main

    return main(["make-corpus", "--out", str(out), "--debs", str(fake_debs), "--cache", str(cache),
                 "--packages", PACKAGES, "--size", "64", "--pairs", "4", "--seed", str(seed)])


def test_a_corpus_builds_offline_with_splits_and_provenance(fake_debs, tmp_path):
    assert _build(fake_debs, tmp_path / "c", tmp_path / "cache") == 0
    out = tmp_path / "c"
    splits = json.loads((out / "splits.json").read_text())
    assert list(splits) == ["train", "val", "test"]
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["corpus_version"] == 2
    names = sorted(splits["train"] + splits["val"] + splits["test"])
    assert names == sorted([f"icon-{c}" for c in CONCEPTS] + PHOTOS + [  # mimetypes and app logos left out
        "stamp-food-fruit", "stamp-vehicles", "clipart-food-fruits", "clipart-animals-birds-parrots",
        "clipart-buildings-homes", "clipart-decorations"])
    assert {s["package"] for s in manifest["sources"]} == set(PACKAGES.split(","))
    assert all(s["version"] == "1.0-1" and s["licences"] == ["CC0-1.0"] for s in manifest["sources"])
    assert {n: c["kind"] for n, c in manifest["classes"].items() if c["kind"] == "stamp-photo"} == dict.fromkeys(
        PHOTOS, "stamp-photo")
    assert all(c["split"] == next(p for p in splits if n in splits[p]) for n, c in manifest["classes"].items())
    assert len(manifest["images"]) == 4 * len(names)
    for record in manifest["images"]:
        image = Image.open(out / record["file"])
        mask = np.asarray(Image.open(out / record["file"].replace(".jpg", ".png")))
        assert image.size == (64, 64) and set(np.unique(mask)) <= {0, 255} and mask.any()
        assert record["background"].startswith("lomiri-wallpapers-16.04:usr/share/backgrounds/")
        split = record["split"]
        for d in record["distractors"]:  # distractors come from the image's own split
            owner = next(c for c in manifest["classes"] if _made_of(c, d["object"]))
            assert manifest["classes"][owner]["split"] == split
    fraction = sum(1 for r in manifest["images"] if r["distractors"]) / len(manifest["images"])
    assert manifest["distractor_fraction"] == pytest.approx(fraction, abs=1e-4) and 0 < fraction < 1


def _made_of(name: str, provenance: str) -> bool:
    """Whether an object file (package:path) belongs to class `name`; the fixture's stamp drawings are d*.png."""
    kind, _, rest = name.partition("-")
    path = provenance.split(":", 1)[1]
    if "/icons/" in path:
        return kind == "icon" and path.endswith(f"/{rest}.png")
    folder, file = path.rsplit("/", 1)
    slug = re.split(r"/stamps/|/openclipart/png/", folder)[1].replace("/", "-")
    drawn = kind == "clipart" or file.startswith("d")
    return slug == rest and kind != "icon" and drawn == (kind != "photo")


def test_val_and_test_images_never_show_a_training_background(fake_debs, tmp_path):
    assert _build(fake_debs, tmp_path / "c", tmp_path / "cache") == 0
    manifest = json.loads((tmp_path / "c" / "MANIFEST.json").read_text())
    used = {part: {r["background"] for r in manifest["images"] if r["split"] == part} for part in SPLITS}
    assert all(used[part] for part in SPLITS)
    assert not used["val"] & used["train"] and not used["test"] & used["train"] and not used["val"] & used["test"]
    pools = manifest["background_pools"]
    assert sum(pools.values()) == manifest["backgrounds"] == N_BACKGROUNDS
    assert all(len(used[part]) <= pools[part] for part in SPLITS) and pools["val"] >= 1 and pools["test"] >= 1


def test_one_concept_stays_on_one_side_and_photo_val_and_test_are_disjoint(fake_debs, tmp_path):
    from fewshotseg.data.corpus.build import photo_classes

    assert _build(fake_debs, tmp_path / "c", tmp_path / "cache") == 0
    manifest = json.loads((tmp_path / "c" / "MANIFEST.json").read_text())
    split = {n: c["split"] for n, c in manifest["classes"].items()}
    # a stamp folder's photographs and drawings, and drawn classes naming a photo class's concept, share its side
    assert split["stamp-food-fruit"] == split["clipart-food-fruits"] == split["photo-food-fruit"]
    assert split["clipart-animals-birds-parrots"] == split["photo-animals-birds"]
    assert split["icon-fish"] == split["clipart-decorations"] == split["photo-animals-fish"]
    assert all(split[p] in ("val", "test") for p in PHOTOS)
    groups = {tuple(g["classes"]): (g["concept"], g["split"]) for g in manifest["concept_groups"]}
    assert groups[("clipart-food-fruits", "photo-food-fruit", "stamp-food-fruit")] == (
        ["fruit"], split["photo-food-fruit"])
    assert groups[("clipart-decorations", "icon-fish", "photo-animals-fish")] == (["fish"], split["icon-fish"])
    assert manifest["overlaps"] == []
    val, test = photo_classes(tmp_path / "c", "val"), photo_classes(tmp_path / "c", "test")
    assert val and test and not set(val) & set(test) and sorted(val + test) == PHOTOS
    assert manifest["photo_splits"] == {"val": val, "test": test}
    splits = json.loads((tmp_path / "c" / "splits.json").read_text())
    assert set(val) <= set(splits["val"]) and set(test) <= set(splits["test"])
    assert split["stamp-vehicles"] in ("train", "val")  # drawn and tied to no photo class: never test


def test_a_concept_on_two_sides_fails_the_build_naming_the_classes(fake_debs, tmp_path, capsys, monkeypatch):
    from fewshotseg.data.corpus import build

    real = build.split_classes

    def leaky(classes, spec):  # the drawings of the fruit stamp folder sent to train
        splits = {part: [n for n in names if n != "stamp-food-fruit"] for part, names in real(classes, spec).items()}
        splits["train"].append("stamp-food-fruit")
        return splits

    monkeypatch.setattr(build, "split_classes", leaky)
    assert _build(fake_debs, tmp_path / "c", tmp_path / "cache") == 2
    err = capsys.readouterr().err
    assert "concept is on two sides" in err and "photo-food-fruit" in err and "stamp-food-fruit (train)" in err
    assert "Traceback" not in err and not (tmp_path / "c").exists()


def test_photo_classes_of_a_version_1_corpus_asks_for_a_rebuild(tmp_path):
    from fewshotseg.data.corpus.build import photo_classes
    from fewshotseg.data.dataset import DataError

    (tmp_path / "MANIFEST.json").write_text(json.dumps({"corpus_version": 1, "splits": {"test": 2}}))
    with pytest.raises(DataError, match="rebuild with make-corpus"):
        photo_classes(tmp_path, "val")
    with pytest.raises(DataError, match="not a make-corpus folder"):
        photo_classes(tmp_path / "nowhere", "test")
    with pytest.raises(DataError, match="'val' and 'test' only"):
        photo_classes(tmp_path, "train")


def test_concept_words_are_singular_and_skip_generic_words():
    from fewshotseg.data.corpus.build import CorpusClass, concept, keywords, words

    assert words("food/fruits") == {"food", "fruit"} and words("berries") == {"berry"}
    assert words("household/dishes") == {"household", "dish"} and words("glass") == {"glass"}
    assert words("people/clothing") == words("clothes") | {"person"} and words("animals/bugs") == {"animal", "insect"}
    photo = CorpusClass("photo-animals-birds-cartoon", "stamp-photo", path="animals/birds/cartoon")
    assert concept(photo) == {"bird"} and keywords(photo) == {"animal", "bird"}
    assert concept(CorpusClass("photo-hobbies-music-string", "stamp-photo", path="hobbies/music/string")) == {
        "music", "string"}
    assert concept(CorpusClass("photo-sports", "stamp-photo", path="sports")) == {"sport"}


def test_too_few_backgrounds_for_three_pools_is_refused():
    from fewshotseg.data.corpus.build import CorpusSpec, ObjectInstance, split_backgrounds
    from fewshotseg.data.dataset import DataError

    with pytest.raises(DataError, match="at least 3"):
        split_backgrounds([ObjectInstance(Path(f"bg{k}.jpg"), "p") for k in range(2)], CorpusSpec())
    pools = split_backgrounds([ObjectInstance(Path(f"bg{k}.jpg"), "p") for k in range(3)], CorpusSpec())
    assert [len(pools[p]) for p in SPLITS] == [1, 1, 1]


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
