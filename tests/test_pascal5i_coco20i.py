"""HSNet-compatible PASCAL-5i and COCO-20i on tiny fixtures written here, checked against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshotseg.data.cache import load_split
from fewshotseg.data.dataset import IGNORE, DataError
from fewshotseg.data.images import decode_original
from fewshotseg.evaluation import metrics
from fewshotseg.evaluation.protocols import hsnet_episodes, per_query_episodes, score_queries
from fewshotseg.models.losses import segmentation_loss

SIZE = 32
AEROPLANE, BUS = 1, 6  # fold 0 holds aeroplane..bottle (1-5); bus (6) is a fold-0 training class


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOTSEG_CACHE_DIR", str(tmp_path / "cache"))


def write_voc_image(root: Path, stem: str, shape: tuple[int, int], boxes: list[tuple[int, tuple]]) -> np.ndarray:
    """A random JPEG and its label map: each (class, (y0, y1, x0, x1)) box ringed by a 1-px 255 boundary."""
    rng = np.random.default_rng(abs(hash(stem)) % 2**32)
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
    label = np.zeros(shape, np.uint8)
    for cls, (y0, y1, x0, x1) in boxes:
        label[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = 255
        label[y0:y1, x0:x1] = cls
    Image.fromarray(label, "L").save(root / "SegmentationClassAug" / f"{stem}.png")
    return label


@pytest.fixture
def voc(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """Three validation images holding aeroplane (one also a bus), two training images; sizes all differ."""
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    labels = {
        "v1": write_voc_image(root, "v1", (30, 40), [(AEROPLANE, (5, 15, 5, 20))]),
        "v2": write_voc_image(root, "v2", (50, 20), [(AEROPLANE, (10, 30, 2, 12)), (BUS, (35, 45, 2, 10))]),
        "v3": write_voc_image(root, "v3", (40, 44), [(AEROPLANE, (2, 12, 2, 12))]),
        "t1": write_voc_image(root, "t1", (32, 36), [(BUS, (5, 20, 5, 20))]),
        "t2": write_voc_image(root, "t2", (34, 32), [(AEROPLANE, (5, 20, 5, 20)), (BUS, (24, 30, 2, 10))]),
    }
    (root / "ImageSets/Segmentation/val.txt").write_text("v1\nv2\nv3\n")
    return root, labels


def test_pascal5i_fold_lists_follow_hsnet(voc):
    root, _ = voc
    test = load_split(f"pascal5i:{root}", SIZE, "test", fold=0, progress=False)
    assert test.names == ["aeroplane"]  # the fold's classes only
    assert [Path(f).stem for f in test.files] == ["v1", "v2", "v3"]  # the validation list only
    train = load_split(f"pascal5i:{root}", SIZE, "train", fold=0, progress=False)
    assert train.names == ["bus"]  # t2's aeroplane is a test class: never a training task
    assert [Path(f).stem for f in train.files] == ["t1", "t2"]  # never a validation-list image
    assert train.originals is None
    val = load_split(f"pascal5i:{root}", SIZE, "val", fold=0, progress=False)
    assert val.names == ["bus"] and [Path(f).stem for f in val.files] == ["v2"]


def test_pascal5i_boundaries_are_ignored_and_kept_at_original_size(voc):
    root, labels = voc
    test = load_split(f"pascal5i:{root}", SIZE, "test", fold=0, progress=False)
    assert set(np.unique(test.masks)) == {0, 1, IGNORE}
    for i, stem in enumerate(["v1", "v2", "v3"]):
        original = decode_original(test.originals[i])
        expected = np.where(labels[stem] == AEROPLANE, 1, np.where(labels[stem] == 255, IGNORE, 0))
        np.testing.assert_array_equal(original, expected)  # original size, boundary IGNORE, the bus background
    old = load_split(f"pascal5i-aug:{root}", SIZE, "test", fold=0, progress=False)
    assert set(np.unique(old.masks)) == {0, 1} and old.originals is None  # the earlier reading: 255 = background
    assert old.count("aeroplane") == 4  # every image with an aeroplane, t2 included


def test_fold_errors_name_the_setting(voc, tmp_path):
    root, _ = voc
    with pytest.raises(DataError, match="pass --fold"):
        load_split(f"pascal5i:{root}", SIZE, "test", progress=False)
    with pytest.raises(DataError, match="--fold must be 0, 1, 2 or 3"):
        load_split(f"pascal5i:{root}", SIZE, "test", fold=4, progress=False)
    (root / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(DataError, match="val.txt: missing"):
        load_split(f"pascal5i:{root}", SIZE, "test", fold=0, progress=False)


def test_hsnet_episodes_cycle_through_the_fold_list_with_seeded_supports(voc):
    root, _ = voc
    test = load_split(f"pascal5i:{root}", SIZE, "test", fold=0, progress=False)
    episodes = hsnet_episodes(test, test.names, 1, seed=0, episodes=7)
    assert [e.query for e in episodes] == [(0,), (1,), (2,), (0,), (1,), (2,), (0,)]  # e mod N, in file order
    for e in episodes:
        assert len(e.support) == 1 and e.support[0] != e.query[0]
    assert episodes == hsnet_episodes(test, test.names, 1, seed=0, episodes=7)  # seeded
    other_seeds = [hsnet_episodes(test, test.names, 1, seed=s, episodes=7) for s in range(1, 6)]
    assert any(o != episodes for o in other_seeds)
    assert len(per_query_episodes(test, test.names, 1)) == 3  # one per query image


def test_scoring_at_original_size_ignores_the_boundary(voc):
    root, labels = voc
    test = load_split(f"pascal5i:{root}", SIZE, "test", fold=0, progress=False)
    episode = hsnet_episodes(test, test.names, 1, seed=0, episodes=2)[1]  # query v2 (50 x 20)
    probs = torch.ones(1, SIZE, SIZE)  # predict every pixel foreground
    counts, floors = score_queries(test, episode, probs, torch.from_numpy(np.array(test.masks[[1]])))[0]
    label = labels["v2"]
    fg = int((label == AEROPLANE).sum())  # 20 x 10 = 200
    valid = int((label != 255).sum())  # 1000 pixels minus both boundary rings
    assert fg == 200 and valid == 50 * 20 - (22 * 12 - 200) - (12 * 10 - 80)
    assert counts == {"fg_i": fg, "fg_u": valid, "bg_i": 0, "bg_u": valid - fg}
    assert floors["all_foreground"] == counts
    support = test.masks[test.offsets["aeroplane"][0] + episode.support[0]]
    rate = (support == 1).sum() / (support != IGNORE).sum()
    assert floors["support_rate"]["fg_i"] == pytest.approx(rate * fg)
    assert floors["support_rate"]["fg_u"] == pytest.approx(fg + rate * (valid - fg))


def test_metrics_and_loss_skip_ignored_pixels():
    target = torch.tensor([[[1, 1, IGNORE, 0]]])
    pred = torch.tensor([[[True, False, True, True]]])
    assert metrics.episode_counts(pred, target) == [{"fg_i": 1, "fg_u": 3, "bg_i": 0, "bg_u": 2}]
    assert metrics.binary_iou(pred, target).item() == pytest.approx(1 / 3)
    for classes in (2, 3):  # the two-class loss and the joint-training multi-class loss
        logits = torch.randn(1, classes, 1, 4, requires_grad=True)
        loss = segmentation_loss(logits, target)
        loss.backward()
        assert torch.all(logits.grad[..., 2] == 0)  # the ignored pixel gets no gradient
        changed = logits.detach().clone()
        changed[..., 2] += 5.0
        assert segmentation_loss(changed, target).item() == pytest.approx(loss.item())
        valid = [0, 1, 3]
        alone = segmentation_loss(logits.detach()[..., valid], target[..., valid])
        assert alone.item() == pytest.approx(loss.item(), rel=1e-5)  # = the loss of the valid pixels alone


def test_hsnet_reductions_by_hand():
    rows = [
        {"class": "a", "fg_i": 2, "fg_u": 4, "bg_i": 6, "bg_u": 8},
        {"class": "a", "fg_i": 0, "fg_u": 4, "bg_i": 4, "bg_u": 8},
        {"class": "b", "fg_i": 3, "fg_u": 3, "bg_i": 9, "bg_u": 9},
    ]
    assert metrics.class_pooled_iou(rows) == {"a": 2 / 8, "b": 1.0}
    assert metrics.hsnet_miou(rows) == pytest.approx((0.25 + 1.0) / 2)
    assert metrics.fb_iou(rows) == pytest.approx((5 / 11 + 19 / 25) / 2)


# --- COCO-20i -------------------------------------------------------------------------------------------------

def write_coco(root: Path, part: str, images: dict[str, tuple[tuple[int, int], list]]) -> None:
    """A tiny COCO 2014 folder: `images` maps a file name to ((height, width), [(category id, segmentation)])."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"{part}2014").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    doc = {"images": [], "annotations": [],
           "categories": [{"id": 2 * c + 1, "name": f"thing {c}", "supercategory": "x"} for c in range(80)]}
    for n, (name, (shape, anns)) in enumerate(sorted(images.items()), start=1):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(root / f"{part}2014" / name)
        doc["images"].append({"id": n, "file_name": name, "height": shape[0], "width": shape[1]})
        for category, seg in anns:
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": n, "category_id": category,
                                       "segmentation": seg, "area": 50.0, "iscrowd": int(isinstance(seg, dict)),
                                       "bbox": [0, 0, 1, 1]})
    (root / "annotations" / f"instances_{part}2014.json").write_text(json.dumps(doc))


def box(y0: int, y1: int, x0: int, x1: int) -> list[list[float]]:
    """A polygon covering rows y0..y1-1 and columns x0..x1-1 (pixel centres)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def test_coco20i_folds_masks_and_original_size(tmp_path):
    from pycocotools import mask as rle

    root = tmp_path / "coco"
    square = np.zeros((30, 40), np.uint8, order="F")
    square[10:20, 25:35] = 1
    compressed = rle.encode(np.asfortranarray(square))
    compressed["counts"] = compressed["counts"].decode("ascii")
    uncompressed = {"size": [30, 40], "counts": [30 * 5, 30 * 2, 30 * 33]}  # columns 5-6 (column-major runs)
    # category id 1 is class 1 (fold 0); id 3 is class 2 (fold 1); id 9 is class 5 (fold 0)
    write_coco(root, "val", {
        "a.jpg": ((30, 40), [(1, box(2, 8, 2, 10)), (1, compressed), (3, box(0, 5, 0, 5))]),
        "b.jpg": ((24, 20), [(1, uncompressed | {"size": [24, 20], "counts": [24 * 5, 24 * 2, 24 * 13]}),
                             (9, box(4, 12, 4, 12))]),
        "c.jpg": ((30, 40), [(3, uncompressed)]),
    })
    test = load_split(f"coco20i:{root}", SIZE, "test", fold=0, progress=False)
    assert test.names == ["thing_0", "thing_4"]  # classes 1 and 5: 4k + 0 + 1
    assert test.count("thing_0") == 2 and test.count("thing_4") == 1
    a = decode_original(test.originals[0])
    assert a.shape == (30, 40)
    expected = square.copy()
    expected[2:8, 2:10] = 1  # the polygon, merged with the compressed RLE of the same class
    assert (a == 1).sum() == expected.sum()
    np.testing.assert_array_equal(a[10:20, 25:35], 1)
    b = decode_original(test.originals[1])
    assert b.shape == (24, 20) and (b == 1).sum() == 24 * 2 and b[:, 5:7].all()  # the crowd RLE
    val = load_split(f"coco20i:{root}", SIZE, "val", fold=0, progress=False)
    assert val.names == ["thing_1"]  # the fold's classes never appear outside its test split
    with pytest.raises(DataError, match="instances_train2014.json: missing"):
        load_split(f"coco20i:{root}", SIZE, "train", fold=0, progress=False)


def test_evaluate_on_a_fold_runs_seeded_hsnet_episodes_with_floors(voc, tmp_path):
    from fewshotseg.evaluation.evaluate import EvaluateConfig, evaluate
    from fewshotseg.meta_learning.update_routine import UpdateParams

    root, _ = voc
    cfg = EvaluateConfig(init="random", data=f"pascal5i:{root}", run_dir=str(tmp_path / "eval"), shots=[1], size=SIZE,
                         encoder="tinynet_e", fold=0, episodes=4, seeds=2)
    results = evaluate(cfg, params=UpdateParams(lr=0.01, steps=1, batch_size=1), progress=False)
    summary = results["shots"]["1"]
    assert results["protocol"] == "hsnet" and results["original_size"]
    assert summary["query_images"] == 4 and summary["seeds"]["seeds"] == [0, 1]
    assert len(summary["seeds"]["hsnet_miou"]["per_seed"]) == 2
    rows = [json.loads(line) for line in (tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["seed"] for r in rows} == {0, 1}
    assert [Path(r["query"]).stem for r in rows[:4]] == ["v1", "v2", "v3", "v1"]  # the fold list, cycled
    # the all-foreground floor, by hand from the label maps: foreground / valid pixels, pooled over the 4 queries
    fg = {"v1": 10 * 15, "v2": 20 * 10, "v3": 10 * 10}
    valid = {"v1": 30 * 40 - (12 * 17 - 150), "v2": 1000 - (22 * 12 - 200) - (12 * 10 - 80), "v3": 40 * 44 - (12 * 12 - 100)}
    queries = ["v1", "v2", "v3", "v1"]
    expected = sum(fg[q] for q in queries) / sum(valid[q] for q in queries)
    assert summary["floors"]["all_foreground"]["hsnet_miou"]["mean"] == pytest.approx(expected)
