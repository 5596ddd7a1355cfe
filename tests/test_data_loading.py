"""Loading real photos, the decode-once cache, dataset specs, PASCAL-5i, FP-k, support folders and check-data."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_PHOTOS
from fewshotseg.data import cache as cache_module
from fewshotseg.data.cache import load_dataset, prepare
from fewshotseg.data.dataset import DataError
from fewshotseg.data.doctor import check_data
from fewshotseg.data.folder import list_queries, load_support
from fewshotseg.data.fp_k import SYNONYMS, load_fp_k
from fewshotseg.data.fss1000 import load_folder
from fewshotseg.data.pascal5i import VOC_CLASSES, fold_classes, load_pascal5i
from fewshotseg.data.sources import parse_spec

SIZE = 32
rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fallback caches (for read-only roots) go to a temp folder, never to ~/.cache."""
    monkeypatch.setenv("FEWSHOTSEG_CACHE_DIR", str(tmp_path_factory.mktemp("fallback-cache")))


def write_pair(folder: Path, stem: str, h: int = 40, w: int = 48, mask_name: str | None = None) -> None:
    """A random JPEG and a 0/255 PNG mask whose foreground is a rectangle at a random place."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{stem}.jpg")
    mask = np.zeros((h, w), np.uint8)
    top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[top : top + h // 2, left : left + w // 2] = 255
    Image.fromarray(mask).save(folder / (mask_name or f"{stem}.png"))


def make_fss(root: Path, classes: dict[str, int]) -> Path:
    for name, pairs in classes.items():
        for i in range(1, pairs + 1):
            write_pair(root / name, str(i))
    return root


# --- real photographs ---------------------------------------------------------------------------------------


def test_real_photos_load_as_binary_masks_with_sensible_foreground() -> None:
    dataset = load_folder(REAL_PHOTOS, 224, progress=False)  # no cache: never write into the fixtures
    assert dataset.names == ["cat", "colorful_sneaker", "duck_toy", "eiffel_tower"]
    assert [dataset.count(n) for n in dataset.names] == [3, 3, 3, 5]
    assert dataset.images.shape == (14, 224, 224, 3) and dataset.images.dtype == np.uint8
    assert dataset.masks.shape == (14, 224, 224) and set(np.unique(dataset.masks)) == {0, 1}
    assert dataset.problems == []
    fractions = dataset.masks.reshape(14, -1).mean(axis=1)
    assert ((fractions > 0.01) & (fractions < 0.9)).all(), (
        fractions
    )  # palette/RGB {0,1} read as 0/1, not 0/255
    for name in dataset.names:
        assert 0.02 < fractions[dataset.indices(name)].mean() < 0.9, name
    assert dataset.files[dataset.offsets["colorful_sneaker"][0]] == "colorful_sneaker/1.jpg"
    assert tuple(dataset.original_sizes[dataset.offsets["colorful_sneaker"][0]]) == (320, 320)  # not the 224 px
    assert tuple(dataset.original_sizes[dataset.offsets["eiffel_tower"][0]]) == (224, 224)
    assert dataset.images.std() > 20  # real pixels, not a blank buffer


# --- layout and resizing ------------------------------------------------------------------------------------


def test_pairing_conventions_and_natural_order(tmp_path: Path) -> None:
    for stem in ("10", "2", "1"):
        write_pair(tmp_path / "fss", stem)
    write_pair(tmp_path / "named", "dog", mask_name="dog_mask.png")
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "named" / "cat.png")
    Image.open(tmp_path / "named" / "dog_mask.png").save(tmp_path / "named" / "cat_mask.png")
    dataset = load_folder(tmp_path, SIZE, progress=False)
    assert dataset.files == ["fss/1.jpg", "fss/2.jpg", "fss/10.jpg", "named/cat.png", "named/dog.jpg"]
    assert dataset.problems == []


def test_images_are_squashed_and_masks_stay_binary(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    image = np.zeros((30, 90, 3), np.uint8)
    image[:, :45] = (200, 10, 10)
    mask = np.zeros((30, 90), np.uint8)
    mask[:, :45] = 255
    Image.fromarray(image).save(folder / "1.png")
    Image.fromarray(mask).save(folder / "1_mask.png")
    dataset = load_folder(tmp_path, 20, progress=False)
    assert dataset.images.shape == (1, 20, 20, 3)
    np.testing.assert_array_equal(
        dataset.masks[0, :, :10], 1
    )  # left half stays left half: squashed, not cropped
    np.testing.assert_array_equal(dataset.masks[0, :, 10:], 0)
    assert tuple(dataset.images[0, 5, 2]) == (200, 10, 10)


# --- the decode-once cache ----------------------------------------------------------------------------------


def test_cache_second_load_is_a_memmap_with_identical_pixels(tmp_path: Path) -> None:
    root = make_fss(tmp_path / "data", {"a": 3, "b": 2})
    direct = load_dataset(root, SIZE, cache=False, progress=False)
    first = load_dataset(root, SIZE, progress=False)
    assert (root / ".fewshotseg-cache").is_dir()
    second = load_dataset(str(root), SIZE, progress=False)
    assert isinstance(second.images, np.memmap) and isinstance(second.masks, np.memmap)
    for loaded in (first, second):
        np.testing.assert_array_equal(loaded.images, direct.images)
        np.testing.assert_array_equal(loaded.masks, direct.masks)
        assert (loaded.names, loaded.offsets, loaded.files) == (direct.names, direct.offsets, direct.files)
        np.testing.assert_array_equal(loaded.original_sizes, direct.original_sizes)
    assert not (tmp_path / "data" / "splits.json").exists()


def build_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the cache builds (decodes from files) that happen from now on."""
    builds: list[int] = []
    decode = cache_module.decode_source

    def counting(*args, **kwargs):
        builds.append(1)
        return decode(*args, **kwargs)

    monkeypatch.setattr(cache_module, "decode_source", counting)
    return builds


def test_cache_rebuilds_when_a_file_is_touched_replaced_or_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_fss(tmp_path / "data", {"a": 3, "b": 2})
    builds = build_count(monkeypatch)
    load_dataset(root, SIZE, progress=False)
    load_dataset(root, SIZE, progress=False)
    assert len(builds) == 1

    stat = (root / "a" / "1.jpg").stat()
    os.utime(root / "a" / "1.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touch
    load_dataset(root, SIZE, progress=False)
    assert len(builds) == 2

    flipped = 255 - np.asarray(Image.open(root / "a" / "1.png"))  # replace a mask by its complement
    Image.fromarray(flipped).save(root / "a" / "1.png")
    dataset = load_dataset(root, SIZE, progress=False)
    assert len(builds) == 3
    assert dataset.masks[0].mean() > 0.5  # the complement of a quarter-size rectangle

    write_pair(root / "b", "3")
    assert load_dataset(root, SIZE, progress=False).count("b") == 3
    load_dataset(root, 24, progress=False)  # another size is another cache entry
    assert len(builds) == 5
    entries = sorted(p.name.split("-")[1] for p in (root / ".fewshotseg-cache").iterdir())
    assert entries == ["24px", "32px"]
    (root / "splits.json").write_text("{}")  # root-level files are not data: no rebuild
    load_dataset(root, SIZE, progress=False)
    assert len(builds) == 5


def test_killed_build_leaves_the_old_cache_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_fss(tmp_path / "data", {"a": 2})
    before = load_dataset(root, SIZE, progress=False)
    write_pair(root / "a", "3")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the build dies while writing the arrays

    monkeypatch.setattr(np, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(root, SIZE, progress=False)
    monkeypatch.undo()
    [entry] = (root / ".fewshotseg-cache").iterdir()
    index = json.loads((entry / "index.json").read_text())
    assert len(index["files"]) == 2  # still the old, complete cache
    assert not [p for p in entry.iterdir() if p.name.endswith(".tmp")]
    after = load_dataset(root, SIZE, progress=False)  # the next load rebuilds and cleans up
    assert after.count("a") == 3 and before.count("a") == 2
    assert len(list(entry.glob("images-*.npy"))) == 1


def test_cached_problems_are_reported_once_per_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_fss(tmp_path / "data", {"a": 2})
    (root / "a" / "notes.txt").write_text("x")
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fewshotseg.data"):
            dataset = load_dataset(root, SIZE, progress=False)
        assert [p.path for p in dataset.problems] == [str(root / "a" / "notes.txt")]
        assert sum("notes.txt" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(DataError, match="notes.txt"):
        load_dataset(
            root, SIZE, strict=True, progress=False
        )  # strict also applies to a cache built leniently


def test_cache_falls_back_when_the_dataset_folder_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_fss(tmp_path / "data", {"a": 2})
    fallback = tmp_path / "elsewhere"
    monkeypatch.setenv("FEWSHOTSEG_CACHE_DIR", str(fallback))
    writable = cache_module._writable
    monkeypatch.setattr(
        cache_module, "_writable", lambda folder: folder != root / ".fewshotseg-cache" and writable(folder)
    )
    load_dataset(root, SIZE, progress=False)
    assert not (root / ".fewshotseg-cache").exists()
    assert len(list(fallback.glob("fss1000-32px-*/index.json"))) == 1
    assert isinstance(load_dataset(root, SIZE, progress=False).images, np.memmap)


def test_prepare_prints_a_one_line_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_fss(tmp_path / "data", {"a": 2, "b": 3})
    prepare(root, SIZE)
    prepare(root, SIZE)
    built, again = capsys.readouterr().out.strip().splitlines()
    assert "2 classes, 5 pairs at 32 px, 0 problem(s); cache built" in built
    assert "already up to date" in again


# --- dataset specs ------------------------------------------------------------------------------------------


def make_voc(root: Path, images: dict[str, list[int]], size: tuple[int, int] = (30, 40)) -> Path:
    """A tiny VOC2012: JPEGImages/<id>.jpg and SegmentationClassAug/<id>.png palette index maps, where image
    <id> holds a horizontal band of each listed class and a 255 boundary line."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    h, w = size
    for image_id, classes in images.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{image_id}.jpg"
        )
        labels = np.zeros((h, w), np.uint8)
        for band, label in enumerate(classes):
            labels[3 * band : 3 * band + 3, 5:] = label
        labels[:, 4] = 255  # the ignore band: background for every task
        png = Image.frombytes("P", (w, h), labels.tobytes())
        png.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
        png.save(root / "SegmentationClassAug" / f"{image_id}.png")
    return root


def test_specs_pick_the_dataset_kind(tmp_path: Path) -> None:
    fss = make_fss(tmp_path / "fss", {"a": 1})
    voc = make_voc(tmp_path / "VOCdevkit" / "VOC2012", {"2007_000001": [1]})
    assert parse_spec(fss).kind == "fss1000"
    assert parse_spec(str(voc)).kind == "pascal5i"
    assert parse_spec(f"pascal5i:{tmp_path / 'VOCdevkit'}").root == voc
    fp = parse_spec(f"fp-k:{fss},{voc}")
    assert (fp.kind, fp.root, fp.voc_root) == ("fp-k", fss, voc)
    with pytest.raises(DataError, match="nowhere"):
        parse_spec(tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown dataset kind 'coco'"):
        parse_spec("coco:/data/coco")
    with pytest.raises(DataError, match="SegmentationClassAug"):
        parse_spec(f"pascal5i:{fss}")


# --- PASCAL-5i ----------------------------------------------------------------------------------------------


def test_pascal5i_one_binary_task_per_class(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "voc", {
        "2007_000001": [1, 15],  # aeroplane + person
        "2007_000002": [15],
        "2007_000003": [1, 2, 3, 4, 5],
        "2007_000004": [1],
    })  # fmt: skip
    dataset = load_pascal5i(voc, SIZE, progress=False)
    assert dataset.names == sorted(["aeroplane", "bicycle", "bird", "boat", "bottle", "person"])
    assert dataset.count("aeroplane") == 3 and dataset.count("person") == 2
    assert [p.action for p in dataset.problems] == ["dropped"] * 14  # the 14 classes no image holds
    assert dataset.files[dataset.offsets["person"][0]] == "JPEGImages/2007_000001.jpg"
    # image 1: aeroplane is band 0 (rows 0-2), person band 1 (rows 3-5); 255 column and the rest background
    _, aeroplane = dataset.pairs("aeroplane")
    _, person = dataset.pairs("person")
    full = np.zeros((30, 40), np.uint8)
    full[0:3, 5:] = 1
    expected = np.asarray(Image.fromarray(full).resize((SIZE, SIZE), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(aeroplane[0], expected)
    assert person[0].sum() > 0 and not (person[0] & aeroplane[0]).any()
    assert fold_classes(0) == ["aeroplane", "bicycle", "bird", "boat", "bottle"]
    assert fold_classes(3) == list(VOC_CLASSES[15:])
    fold0 = load_dataset(f"pascal5i-aug:{voc}", SIZE, fold=0, progress=False)  # the pre-HSNet protocol
    assert fold0.names == sorted(fold_classes(0))
    with pytest.raises(DataError, match="fold"):
        load_dataset(f"pascal5i-aug:{voc}", SIZE, fold=4, progress=False)


def test_pascal5i_image_list_min_foreground_and_bad_labels(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "voc", {"a": [1], "b": [1, 15], "c": [15]})
    (voc / "val.txt").write_text("a\nb\nmissing\n")
    dataset = load_pascal5i(voc, SIZE, image_list=voc / "val.txt", progress=False)
    assert (dataset.count("aeroplane"), dataset.count("person")) == (2, 1)
    assert dataset.problems[0].path.endswith("missing.png")
    with pytest.raises(DataError, match="no usable"):
        load_pascal5i(voc, SIZE, min_foreground=10**6, progress=False)
    labels = np.full((30, 40), 37, np.uint8)
    Image.fromarray(labels).save(voc / "SegmentationClassAug" / "c.png")
    problems = load_pascal5i(voc, SIZE, progress=False).problems
    assert any("c.png" in p.path and "37" in p.reason for p in problems)


# --- FP-k ---------------------------------------------------------------------------------------------------


def test_fp_k_merges_fss_classes_with_pascal_synonyms(tmp_path: Path) -> None:
    fss = make_fss(tmp_path / "fss", {name: 2 for name in SYNONYMS} | {"zebra": 2})
    voc_classes = [VOC_CLASSES.index(v) + 1 for v in SYNONYMS.values()]
    voc = make_voc(tmp_path / "voc", {"x1": voc_classes, "x2": voc_classes[:2], "x3": [8]})  # 8 = cat
    dataset = load_fp_k(fss, voc, SIZE, min_pairs=3, progress=False)
    assert dataset.names == sorted(SYNONYMS)
    assert {n: dataset.count(n) for n in dataset.names} == {
        "airliner": 4, "bus": 4, "motorbike": 3, "potted_plant": 3, "television": 3,
    }  # fmt: skip
    assert dataset.root == tmp_path
    assert dataset.files[dataset.offsets["airliner"][0]] == "fss/airliner/1.jpg"
    with pytest.raises(DataError, match=r"at least 420 usable pairs.*airliner \(4\)"):
        load_dataset(f"fp-k:{fss},{voc}", SIZE, progress=False)


def test_fp_k_without_pascal_says_what_to_download(tmp_path: Path) -> None:
    fss = make_fss(tmp_path / "fss", {name: 1 for name in SYNONYMS})
    for spec in (f"fp-k:{fss}", f"fp-k:{fss},{tmp_path / 'no-voc'}"):
        with pytest.raises(DataError, match="VOCtrainval_11-May-2012.tar.*SegmentationClassAug"):
            load_dataset(spec, SIZE, progress=False)


# --- a user's support folder and queries --------------------------------------------------------------------


def test_support_folder_conventions(tmp_path: Path) -> None:
    write_pair(tmp_path / "named", "dog", mask_name="dog_mask.png")
    write_pair(tmp_path / "named", "cat", mask_name="cat_mask.png")
    (tmp_path / "named" / "notes.txt").write_text("x")
    images, masks, problems = load_support(tmp_path / "named", SIZE)
    assert images.shape == (2, SIZE, SIZE, 3) and masks.shape == (2, SIZE, SIZE)
    assert set(np.unique(masks)) == {0, 1}
    assert [Path(p.path).name for p in problems] == ["notes.txt"]
    make_fss(tmp_path / "fss", {"only_class": 3})
    images, _, problems = load_support(tmp_path / "fss", SIZE)  # descends into the one class folder
    assert images.shape[0] == 3 and problems == []
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no support image/mask pair") as err:
        load_support(tmp_path / "empty", SIZE)
    assert "a.jpg" in str(err.value)


def test_list_queries_skips_masks(tmp_path: Path) -> None:
    write_pair(tmp_path / "q", "1")
    write_pair(tmp_path / "q", "dog", mask_name="dog_mask.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "q" / "10.png")
    assert [p.name for p in list_queries(tmp_path / "q")] == ["1.jpg", "10.png", "dog.jpg"]
    assert list_queries(tmp_path / "q" / "1.jpg") == [tmp_path / "q" / "1.jpg"]
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no query images"):
        list_queries(tmp_path / "none")


# --- check-data ---------------------------------------------------------------------------------------------


def test_check_data_report_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_fss(tmp_path / "data", {"a": 2, "b": 3})
    assert check_data(root, size=SIZE, strict=True) == 0
    out = capsys.readouterr().out
    assert "classes      2" in out and "pairs        5; per class min 2, median 2.5, max 3" in out
    assert "48x40 (5)" in out and "problems     0" in out
    (root / "b" / "notes.txt").write_text("x")
    assert check_data(root, size=SIZE) == 0
    assert check_data(root, size=SIZE, strict=True) == 1
    out = capsys.readouterr().out
    assert "problems     1" in out and "skipped: " in out and "notes.txt" in out
