"""Several objects at once: the support layouts, `MultiClassSegmenter` (one-vs-rest and the joint head), the overlap
rule, save/load, `adapt` and `predict` on a segmenter of several classes, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_PHOTOS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CLASSES = ["red", "blue"]
SIZE = 64


def scene(rng: np.random.Generator, classes: tuple[int, ...] = (1, 2), size: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with a red square (label 1) and a blue square (label 2), each in a random half."""
    image = rng.integers(0, 70, (size, size, 3)).astype(np.uint8)
    labels = np.zeros((size, size), np.uint8)
    halves = rng.permutation(2)
    for k in classes:
        side = int(rng.integers(14, 22))
        y = int(rng.integers(2, size - side - 2))
        x = int(halves[k - 1] * size // 2 + rng.integers(2, size // 2 - side - 2))
        image[y:y + side, x:x + side] = (220, 40, 40) if k == 1 else (40, 60, 220)
        labels[y:y + side, x:x + side] = k
    return image, labels


def scenes(count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [scene(rng, (1, 2) if i != 1 else (1,)) for i in range(count)]  # the second image shows no blue square


def write_support(folder: Path, pairs, layout: str) -> None:
    """`indexed`: n.jpg + n.png (palette) + classes.txt; `per-class`: n.jpg + n.red.png / n.blue.png (0/255)."""
    from fewshotseg.data.exports import label_png

    folder.mkdir(parents=True)
    for n, (image, labels) in enumerate(pairs, start=1):
        Image.fromarray(image).save(folder / f"{n}.jpg", quality=95)
        if layout == "indexed":
            label_png(labels).save(folder / f"{n}.png")
        else:
            for k, name in enumerate(CLASSES, start=1):
                if (labels == k).any():
                    Image.fromarray((labels == k).astype(np.uint8) * 255).save(folder / f"{n}.{name}.png")
    if layout == "indexed":
        (folder / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory) -> Path:
    """A tinynet_e initialization at 64 px whose card's method is the probe (encoder features, mirrored views)."""
    import torch

    from fewshotseg.models.efficientlab import ModelConfig
    from fewshotseg.segmenter import FewShotSegmenter

    torch.manual_seed(0)
    seg = FewShotSegmenter.from_pretrained("random", model_config=ModelConfig(encoder="tinynet_e"), size=SIZE,
                                           device="cpu")
    seg.card.adaptation = {"method": "probe", "settings": {"features": ["skip", "deep"], "flip": True},
                           "source": "test"}
    return seg.save_pretrained(tmp_path_factory.mktemp("init") / "tiny")


@pytest.fixture(scope="module")
def support(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("support")
    pairs = scenes(3)
    for layout in ("indexed", "per-class"):
        write_support(root / layout, pairs, layout)
    query = root / "query"
    query.mkdir()
    for n, (image, _) in enumerate(scenes(3, seed=1), start=1):
        Image.fromarray(image).save(query / f"q{n}.jpg", quality=95)
    return {"indexed": root / "indexed", "per-class": root / "per-class", "query": query}


def fitted(init: Path, folder: Path, strategy: str = "auto"):
    from fewshotseg.data.folder import multiclass_folder
    from fewshotseg.multiclass import MultiClassSegmenter

    found = multiclass_folder(folder)
    assert found is not None
    seg = MultiClassSegmenter.from_pretrained(init, device="cpu")
    return seg.fit(found.images, found.masks, found.classes, strategy=strategy, names=[str(p) for p in found.images])


# ------------------------------------------------------------------------------------------ the overlap rule


def test_a_pixel_two_classes_claim_goes_to_the_most_probable():
    from fewshotseg.multiclass import MultiClassPrediction, resolve

    p = np.array([[[0.9, 0.6, 0.2, 0.7, 0.8]],   # class 1
                  [[0.8, 0.7, 0.3, 0.7, 0.1]]],  # class 2
                 np.float32)
    labels, contested = resolve(p, 0.5)
    assert labels.tolist() == [[1, 2, 0, 1, 1]]  # both above: the higher wins; a tie goes to the first class
    assert contested == 3
    assert resolve(p, 0.75)[0].tolist() == [[1, 0, 0, 0, 1]] and resolve(p, 0.75)[1] == 1
    pred = MultiClassPrediction(CLASSES, p, labels, contested)
    masks = pred.masks
    assert not (masks["red"] & masks["blue"]).any()  # never both
    assert masks["red"].tolist() == [[True, False, False, True, True]]


def test_one_vs_rest_overlaps_are_resolved_never_both(all_foreground_init, tmp_path):
    """Every class of an all-foreground initialization claims every pixel with probability 1: each pixel goes to
    one class (the first, on the exact tie), and every pixel is counted as contested."""
    from fewshotseg.meta_learning.update_routine import UpdateParams
    from fewshotseg.multiclass import MultiClassSegmenter

    pairs = scenes(2)
    seg = MultiClassSegmenter.from_pretrained(all_foreground_init, device="cpu", size=32)
    seg.fit([im for im, _ in pairs], [lab for _, lab in pairs], CLASSES, method="finetune",
            update_params=UpdateParams(lr=1e-4, steps=1))
    assert seg.strategy == "one-vs-rest"  # the only strategy for fine-tuning
    (pred,) = seg.predict([pairs[0][0]])
    assert pred.probabilities.shape == (2, 80, 80) and (pred.probabilities > 0.99).all()
    assert pred.contested == 80 * 80 and (pred.labels == 1).all()
    assert pred.masks["red"].all() and not pred.masks["blue"].any()


# ------------------------------------------------------------------------------------------ layouts and fits


def test_a_one_class_folder_is_not_read_as_several_classes(tmp_path):
    from fewshotseg.data.folder import multiclass_folder

    duck = tmp_path / "duck"
    shutil.copytree(REAL_PHOTOS / "duck_toy", duck)
    assert multiclass_folder(duck) is None
    named = tmp_path / "named"
    named.mkdir()
    for n in (1, 2):
        shutil.copy(duck / f"{n}.jpg", named / f"a{n}.jpg")
        shutil.copy(duck / f"{n}.png", named / f"a{n}_mask.png")
    assert multiclass_folder(named) is None


def test_indexed_masks_and_one_mask_per_class_give_the_same_fit(tiny_init, support, one_torch_thread):
    from fewshotseg.data.folder import multiclass_folder
    from fewshotseg.multiclass import MultiClassSegmenter

    indexed, per_class = multiclass_folder(support["indexed"]), multiclass_folder(support["per-class"])
    assert indexed is not None and per_class is not None
    assert (indexed.layout, per_class.layout) == ("indexed", "per-class")
    assert list(indexed.classes.values()) == CLASSES and list(per_class.classes.values()) == ["blue", "red"]
    assert per_class.masks["blue"][1] is None  # the second image shows no blue square: no file

    (support["per-class"] / "classes.txt").write_text("red\nblue\n")  # fixes the order: value 1 red, 2 blue
    try:
        per_class = multiclass_folder(support["per-class"])
        assert per_class is not None and list(per_class.classes.values()) == CLASSES
        queries = sorted(support["query"].glob("*.jpg"))
        for strategy in ("one-vs-rest", "joint"):
            a = fitted(tiny_init, support["indexed"], strategy).predict(queries)
            b = fitted(tiny_init, support["per-class"], strategy).predict(queries)
            for pa, pb in zip(a, b, strict=True):
                assert np.array_equal(pa.probabilities, pb.probabilities) and np.array_equal(pa.labels, pb.labels)
        # the same support pairs as arrays: indexed maps, and {class: binary masks} with None where absent
        pairs = [(np.asarray(Image.open(p)), np.asarray(Image.open(p.with_suffix(".png"))))
                 for p in indexed.images]
        seg = MultiClassSegmenter.from_pretrained(tiny_init, device="cpu")
        maps = seg.fit([im for im, _ in pairs], [lab for _, lab in pairs], CLASSES, strategy="joint").predict(queries)
        by_class = {c: [lab == k if (lab == k).any() else None for _, lab in pairs] for k, c in enumerate(CLASSES, 1)}
        dicts = seg.fit([im for im, _ in pairs], by_class, strategy="joint").predict(queries)
        for pa, pb, pc in zip(a, maps, dicts, strict=True):  # `a`: the joint head's, fit on the folder
            assert np.array_equal(pa.labels, pb.labels) and np.array_equal(pb.probabilities, pc.probabilities)
    finally:
        (support["per-class"] / "classes.txt").unlink()


def test_class_files_name_any_mask_values(tiny_init, support, tmp_path, one_torch_thread):
    """classes.json may name any values (grayscale masks of 8 and 12 here); classes.txt may name the background
    first: both give the fit of masks valued 1 and 2."""
    from fewshotseg.data.folder import multiclass_folder

    gaps, named = tmp_path / "gaps", tmp_path / "named"
    shutil.copytree(support["indexed"], gaps)
    shutil.copytree(support["indexed"], named)
    (gaps / "classes.txt").unlink()
    (gaps / "classes.json").write_text('{"8": "red", "12": "blue"}')
    for mask in gaps.glob("*.png"):
        values = np.asarray(Image.open(mask))
        Image.fromarray(np.select([values == 1, values == 2], [8, 12], 0).astype(np.uint8)).save(mask)  # mode L
    (named / "classes.txt").write_text("_background_\nred\n# a comment\nblue\n")
    found = multiclass_folder(gaps)
    assert found is not None and found.classes == {8: "red", 12: "blue"}
    assert multiclass_folder(named).classes == {1: "red", 2: "blue"}
    queries = sorted(support["query"].glob("*.jpg"))
    reference = fitted(tiny_init, support["indexed"], "joint").predict(queries)
    for folder in (gaps, named):
        for a, b in zip(reference, fitted(tiny_init, folder, "joint").predict(queries), strict=True):
            assert np.array_equal(a.probabilities, b.probabilities)


def test_a_joint_head_and_one_vs_rest_both_find_two_separable_objects(tiny_init, support, one_torch_thread):
    from fewshotseg.data.folder import multiclass_folder
    from fewshotseg.multiclass import MultiClassSegmenter

    queries = scenes(3, seed=1)
    found = multiclass_folder(support["indexed"])
    assert found is not None
    for strategy, rounds in (("one-vs-rest", 0), ("joint", 0), ("one-vs-rest", 1), ("joint", 1)):
        seg = MultiClassSegmenter.from_pretrained(tiny_init, device="cpu")  # self-training: a query refits its heads
        seg.fit(found.images, found.masks, found.classes, strategy=strategy, method="probe",
                settings={"self_train": rounds, "confidence": 0.7})
        assert seg.strategy == strategy and seg.classes == CLASSES
        for pred, (_, truth) in zip(seg.predict([im for im, _ in queries]), queries, strict=True):
            assert pred.labels.shape == truth.shape and pred.probabilities.shape == (2, *truth.shape)
            for k in (1, 2):
                union = ((pred.labels == k) | (truth == k)).sum()  # 0: neither shows a blue square
                assert union == 0 or ((pred.labels == k) & (truth == k)).sum() / union > 0.5, (strategy, k)


def test_the_joint_softmax_head_separates_separable_features():
    import torch

    from fewshotseg.adaptation.joint import balanced_label_weights, cell_labels, softmax_head

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 6, generator=g) * 4
    y = torch.randint(0, 3, (600,), generator=g)
    x = centres[y] + 0.3 * torch.randn(600, 6, generator=g)
    head = softmax_head(x, y, 3, 1e-4, balanced_label_weights(y, 3), max_iter=300)
    assert torch.equal((x @ head.weight.T + head.bias).argmax(1), y)
    # a class covering under half of every cell it touches still gets those cells
    fractions = torch.zeros(1, 3, 2, 2)
    fractions[0, 0] = 1.0
    fractions[0, 0, 0, 0], fractions[0, 2, 0, 0] = 0.7, 0.3
    fractions[0, 0, 1, 1], fractions[0, 1, 1, 1] = 0.2, 0.8
    assert cell_labels(fractions).tolist() == [[[2, 0], [0, 1]]]


# ------------------------------------------------------------------------------------------ save, load, CLI, predict


def test_save_and_load_give_identical_predictions(tiny_init, support, tmp_path, one_torch_thread):
    from fewshotseg.errors import UserError
    from fewshotseg.multiclass import MultiClassSegmenter
    from fewshotseg.segmenter import FewShotSegmenter

    queries = sorted(support["query"].glob("*.jpg"))
    for strategy in ("one-vs-rest", "joint"):
        seg = fitted(tiny_init, support["indexed"], strategy)
        folder = seg.save_pretrained(tmp_path / strategy)
        assert (folder / "card.json").is_file() and (folder / "classes.txt").read_text() == "red\nblue\n"
        card = json.loads((folder / "card.json").read_text())
        assert card["adaptation"]["fitted"]["classes"] == CLASSES
        assert card["adaptation"]["fitted"]["strategy"] == strategy
        back = MultiClassSegmenter.from_pretrained(folder, device="cpu")
        assert back.fitted and back.classes == CLASSES and back.strategy == strategy
        for a, b in zip(seg.predict(queries), back.predict(queries), strict=True):
            assert np.array_equal(a.probabilities, b.probabilities) and np.array_equal(a.labels, b.labels)
        with pytest.raises(UserError, match=r"several classes \(red, blue\).*MultiClassSegmenter.from_pretrained"):
            FewShotSegmenter.from_pretrained(folder, device="cpu")
    one = FewShotSegmenter.from_pretrained(tmp_path / "one-vs-rest" / "class-2", device="cpu")  # a class alone
    assert one.fitted and one.card.name == "blue"


def test_adapt_writes_what_the_api_predicts(tiny_init, support, tmp_path, one_torch_thread):
    from fewshotseg.cli import main
    from fewshotseg.multiclass import MultiClassSegmenter

    out = tmp_path / "out"
    code = main(["adapt", "--init", str(tiny_init), "--support", str(support["per-class"]), "--query",
                 str(support["query"]), "--out", str(out), "--save-weights"])
    assert code == 0
    summary = json.loads((out / "adapt.json").read_text())
    assert summary["classes"] == ["blue", "red"] and summary["layout"] == "per-class"
    assert (out / "classes.txt").read_text() == "blue\nred\n"

    seg = MultiClassSegmenter.from_pretrained(tiny_init, device="cpu")
    found_images = sorted(support["per-class"].glob("?.jpg"))
    seg.fit(found_images, {c: [p.with_name(f"{p.stem}.{c}.png") if p.with_name(f"{p.stem}.{c}.png").is_file()
                               else None for p in found_images] for c in ("blue", "red")})
    assert seg.strategy == summary["strategy"]
    for query in sorted(support["query"].glob("*.jpg")):
        (pred,) = seg.predict([query])  # one at a time, as adapt predicts independent queries
        with Image.open(out / f"{query.stem}_mask.png") as im:
            assert im.mode == "P"
            written = np.asarray(im)
        assert np.array_equal(written, pred.labels)
        for name, mask in pred.masks.items():
            assert np.array_equal(np.asarray(Image.open(out / f"{query.stem}_{name}_mask.png")) > 127, mask)
        assert Image.open(out / f"{query.stem}_overlay.png").size == Image.open(query).size
    saved = MultiClassSegmenter.from_pretrained(out / "adapted", device="cpu")
    (again,) = saved.predict([sorted(support["query"].glob("*.jpg"))[0]])
    assert np.array_equal(again.labels, np.asarray(Image.open(out / "q1_mask.png")))


def test_predict_exports_read_back_as_the_indexed_pngs(tiny_init, support, tmp_path, one_torch_thread):
    from pycocotools.coco import COCO

    from fewshotseg.errors import UserError
    from fewshotseg.predict import PredictOptions, predict_folder
    from test_predict import filled, iou

    model = fitted(tiny_init, support["indexed"], "one-vs-rest").save_pretrained(tmp_path / "model")
    images = tmp_path / "photos"
    (images / "sub").mkdir(parents=True)
    for n, (image, _) in enumerate(scenes(4, seed=2)):
        Image.fromarray(image).resize((80 + 40 * n, 80)).save(images / ("sub" if n % 2 else "") / f"p{n}.jpg")
    out = tmp_path / "labels"

    def options(**kw):
        return PredictOptions(model=str(model), images=str(images), device="cpu", progress=False, batch_size=2,
                              **kw)

    summary = predict_folder(options(out=str(out), formats="png,coco,yolo"))
    assert summary["predicted"] == 4 and summary["classes"] == CLASSES and summary["contested_pixels"] >= 0
    assert (out / "classes.txt").read_text() == "red\nblue\n"
    coco = COCO(str(out / "coco.json"))
    assert [(c["id"], c["name"]) for c in coco.dataset["categories"]] == [(1, "red"), (2, "blue")]
    present = 0
    for image in coco.dataset["images"]:
        rel = Path(image["file_name"])
        with Image.open(out / "masks" / rel.parent / f"{rel.stem}_mask.png") as im:
            assert im.mode == "P"
            labels = np.asarray(im)
        assert set(np.unique(labels).tolist()) <= {0, 1, 2} and labels.shape == (image["height"], image["width"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert sorted(a["category_id"] for a in anns) == [k for k in (1, 2) if (labels == k).any()]
        for ann in anns:  # RLE: exact
            assert np.array_equal(coco.annToMask(ann).astype(bool), labels == ann["category_id"])
        rows = (out / "labels" / rel.with_suffix(".txt")).read_text().splitlines()
        assert {int(r.split()[0]) for r in rows} == {k - 1 for k in (1, 2) if (labels == k).any()}
        for k in (1, 2):  # YOLO: class id k - 1, its regions' outlines
            if (labels == k).any():
                from test_predict import yolo_raster

                text = "\n".join("0 " + r.split(" ", 1)[1] for r in rows if r.startswith(f"{k - 1} "))
                assert iou(yolo_raster(text, image["width"], image["height"]), filled(labels == k)) > 0.9
        present += len(anns)
    assert present >= 4

    # the same segmenter through the API gives the PNGs; tiles give a label map of the image's size too
    from fewshotseg.multiclass import MultiClassSegmenter

    seg = MultiClassSegmenter.from_pretrained(model, device="cpu")
    rels = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.jpg"))
    for rel, pred in zip(rels[:2], seg.predict([images / r for r in rels[:2]], batch_size=2), strict=True):
        assert np.array_equal(np.asarray(Image.open(out / "masks" / Path(rel).parent / f"{Path(rel).stem}_mask.png")),
                              pred.labels)
    tiled = predict_folder(options(out=str(tmp_path / "tiled"), tile=64, overlap=16))
    assert tiled["predicted"] == 4
    with pytest.raises(UserError, match=r"--label .* 2 classes"):
        predict_folder(options(out=str(tmp_path / "o"), label="thing"))


# ------------------------------------------------------------------------------------------ bad input


def test_bad_support_is_refused_with_the_file_and_the_class(tiny_init, tmp_path, capsys):
    from fewshotseg.cli import main
    from fewshotseg.data.dataset import DataError
    from fewshotseg.data.exports import label_png
    from fewshotseg.data.folder import multiclass_folder
    from fewshotseg.errors import UserError
    from fewshotseg.multiclass import MultiClassSegmenter

    pairs = scenes(2)
    query = tmp_path / "query"
    query.mkdir()
    Image.fromarray(pairs[0][0]).save(query / "q.jpg")

    def adapt(folder: Path) -> str:
        code = main(["adapt", "--init", str(tiny_init), "--support", str(folder), "--query", str(query), "--out",
                     str(tmp_path / "out" / folder.name)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        return err

    # a class named in classes.txt with no pixel in any support mask
    absent = tmp_path / "absent"
    write_support(absent, pairs, "indexed")
    (absent / "classes.txt").write_text("red\nblue\ngreen\n")
    err = adapt(absent)
    assert "'green': no pixel in any support mask" in err and "1.jpg" in err and "2.jpg" in err

    # a value of an indexed mask that the classes file does not name
    unknown = tmp_path / "unknown"
    write_support(unknown, pairs, "indexed")
    labels = pairs[1][1].copy()
    labels[:4, :4] = 7
    label_png(labels).save(unknown / "2.png")
    err = adapt(unknown)
    assert "2.png" in err and "value(s) 7" in err and "1 red, 2 blue" in err

    # a pixel marked as two classes in per-class masks
    overlap = tmp_path / "overlap"
    write_support(overlap, pairs, "per-class")
    Image.fromarray(((pairs[0][1] > 0).astype(np.uint8)) * 255).save(overlap / "1.blue.png")
    err = adapt(overlap)
    assert "1.jpg" in err and "both 'blue' and 'red'" in err

    # --strategy on a folder of one kind of object; an unknown strategy
    one = tmp_path / "one"
    shutil.copytree(REAL_PHOTOS / "duck_toy", one)
    code = main(["adapt", "--init", str(tiny_init), "--support", str(one), "--query", str(query), "--out",
                 str(tmp_path / "out" / "one"), "--strategy", "joint"])
    assert code == 2 and "holds one kind of object" in capsys.readouterr().err
    assert main(["adapt", "--init", str(tiny_init), "--support", str(absent), "--query", str(query), "--out",
                 str(tmp_path / "out" / "s"), "--strategy", "both"]) == 2
    assert "one-vs-rest" in capsys.readouterr().err

    # two layouts in one folder; a class file naming a class twice; a mask of a class the file does not name
    mixed = tmp_path / "mixed"
    write_support(mixed, pairs, "per-class")
    Image.fromarray(pairs[0][1] * 100).save(mixed / "1_mask.png")
    with pytest.raises(DataError, match="mixes one mask per class"):
        multiclass_folder(mixed)
    twice = tmp_path / "twice"
    write_support(twice, pairs, "indexed")
    (twice / "classes.txt").write_text("red\nred\n")
    with pytest.raises(DataError, match="names values 1 and 2"):
        multiclass_folder(twice)
    (mixed / "1_mask.png").unlink()
    (mixed / "classes.txt").write_text("red\n")
    with pytest.raises(DataError, match=r"not named in its classes file: 1.blue.png \(blue\)"):
        multiclass_folder(mixed)

    seg = MultiClassSegmenter.from_pretrained(tiny_init, device="cpu")
    images, maps = [im for im, _ in pairs], [lab for _, lab in pairs]
    with pytest.raises(UserError, match="joint strategy .* the method is finetune"):
        seg.fit(images, maps, CLASSES, strategy="joint", method="finetune")
    with pytest.raises(UserError, match="indexed masks need their classes"):
        seg.fit(images, maps)
    with pytest.raises(UserError, match="class 'blue': 1 mask"):
        seg.fit(images, {"red": [maps[0] == 1, maps[1] == 1], "blue": [maps[0] == 2]})
    with pytest.raises(UserError, match="predict before fit"):
        seg.predict(images)
    with pytest.raises(DataError, match="an indexed mask must be a palette or grayscale PNG"):
        rgb = tmp_path / "rgb.png"
        Image.fromarray(np.stack([maps[0]] * 3, -1)).save(rgb)
        seg.fit(images[:1], [rgb], CLASSES)
