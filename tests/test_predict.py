"""`fewshotseg predict`: a fitted segmenter over a folder tree; PNG, COCO and YOLO outputs that agree; resume,
shards, workers, tiles, a killed run, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import REAL_PHOTOS, REPO

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _fit(folder: Path, policy: str) -> Path:
    import torch

    from fewshotseg.meta_learning.update_routine import UpdateParams
    from fewshotseg.models.efficientlab import ModelConfig
    from fewshotseg.segmenter import FewShotSegmenter

    torch.manual_seed(0)
    seg = FewShotSegmenter.from_pretrained("random", model_config=ModelConfig(encoder="tinynet_e"), size=64,
                                           device="cpu")
    duck = REAL_PHOTOS / "duck_toy"
    seg.fit([duck / "1.jpg", duck / "2.jpg"], [duck / "1.png", duck / "2.png"],
            update_params=UpdateParams(lr=0.01, steps=2, bn_policy=policy))
    seg.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """A fitted tinynet_e segmenter at 64 px, BatchNorm from the support images (each image independent)."""
    return _fit(tmp_path_factory.mktemp("model") / "duck", "support")


def make_tree(root: Path, copies: int = 1, scale: float = 1.0) -> list[str]:
    """The fixture photos in a tree (two levels of sub-folders), their masks beside them (FSS-style n.png, left
    out as masks), a text file and a truncated JPEG; the relative paths of the images."""
    photos = sorted(REAL_PHOTOS.glob("*/*.jpg"))
    rels = []
    for c in range(copies):
        for i, jpg in enumerate(photos):
            rel = Path(f"set{c}") / jpg.parent.name / ("deep" if i % 2 else "") / jpg.name
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            if scale == 1.0:
                shutil.copy(jpg, root / rel)
            else:
                with Image.open(jpg) as im:
                    im.resize((int(im.width * scale), int(im.height * scale))).save(root / rel, quality=90)
            shutil.copy(jpg.with_suffix(".png"), (root / rel).with_suffix(".png"))
            rels.append(rel.as_posix())
    (root / "notes.txt").write_text("not an image\n")
    (root / "broken.jpg").write_bytes(photos[0].read_bytes()[:600])
    return sorted(rels)


def options(fitted: Path, images: Path, out: Path, **kw):
    from fewshotseg.predict import PredictOptions

    return PredictOptions(model=str(fitted), images=str(images), out=str(out), device="cpu", progress=False, **kw)


def mask_of(out: Path, rel: str) -> np.ndarray:
    path = out / "masks" / Path(rel).parent / f"{Path(rel).stem}_mask.png"
    with Image.open(path) as im:
        values = np.asarray(im)
    assert set(np.unique(values)) <= {0, 255}
    return values > 127


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def filled(mask: np.ndarray) -> np.ndarray:
    """What polygons of outer contours can carry: the mask with its holes filled (background counts as connected
    across diagonal corners, as in marching squares: a gap between diagonal neighbours is not a hole)."""
    from scipy import ndimage

    return ndimage.binary_fill_holes(mask, structure=np.ones((3, 3)))


def yolo_raster(text: str, width: int, height: int, supersample: int = 4) -> np.ndarray:
    """A YOLO label file's polygons filled with PIL: drawn at `supersample` x the size (PIL's fill takes in every
    pixel the outline touches) and reduced by majority, so a pixel is in when most of it is inside."""
    s = supersample
    canvas = Image.new("L", (width * s, height * s))
    draw = ImageDraw.Draw(canvas)
    for row in text.splitlines():
        cls, *coords = row.split()
        assert cls == "0" and len(coords) >= 6 and len(coords) % 2 == 0
        xy = np.asarray(coords, dtype=float).reshape(-1, 2)
        assert ((xy >= 0) & (xy <= 1)).all()
        draw.polygon([(x * width * s - 0.5, y * height * s - 0.5) for x, y in xy], fill=1)
    return np.asarray(canvas, np.float32).reshape(height, s, width, s).mean(axis=(1, 3)) >= 0.5


def files_under(folder: Path) -> dict[str, bytes]:
    """The outputs under `folder`, without what predict keeps for itself (temporary files, its record of writes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not {".partial", ".predict-written"} & set(p.parts)}


# ------------------------------------------------------------------------------------------ outputs


def test_every_format_reads_back_as_the_png_masks(fitted, tmp_path, one_torch_thread):
    from pycocotools.coco import COCO

    from fewshotseg.predict import predict_folder
    from fewshotseg.segmenter import FewShotSegmenter

    images, out = tmp_path / "photos", tmp_path / "labels"
    rels = make_tree(images)
    summary = predict_folder(options(fitted, images, out, formats="png,coco,yolo", batch_size=3))
    assert summary["predicted"] == len(rels) and summary["listed"] == len(rels) + 1  # + the truncated JPEG
    assert [f["file"] for f in summary["failed"]] == ["broken.jpg"] and "corrupt" in summary["failed"][0]["reason"]
    skipped = {s["file"]: s["reason"] for s in summary["skipped"]}
    assert "not a .jpg" in skipped["notes.txt"] and len(skipped) == 1 + len(rels)  # + every n.png beside n.jpg
    assert summary["batchnorm"] == "each image independent of the others"

    # The masks are the segmenter's own, at each image's size, in the tree's relative paths.
    seg = FewShotSegmenter.from_pretrained(fitted, device="cpu")
    first = seg.predict([images / r for r in rels[:3]])  # the first batch, as predict formed it
    for rel, pred in zip(rels, first, strict=False):
        assert np.array_equal(mask_of(out, rel), pred.mask)
    for rel in rels:
        with Image.open(images / rel) as im:
            assert mask_of(out, rel).shape == (im.height, im.width)

    coco = COCO(str(out / "coco.json"))
    assert [c["name"] for c in coco.dataset["categories"]] == ["duck"]  # the card's name
    assert sorted(i["file_name"] for i in coco.dataset["images"]) == rels
    foreground = 0
    for image in coco.dataset["images"]:
        png = mask_of(out, image["file_name"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert len(anns) == int(png.any())
        foreground += len(anns)
        if anns:
            assert np.array_equal(coco.annToMask(anns[0]).astype(bool), png)  # RLE: exact
            assert anns[0]["area"] == png.sum() and anns[0]["iscrowd"] == 0
        text = (out / "labels" / Path(image["file_name"]).with_suffix(".txt")).read_text()
        assert iou(yolo_raster(text, image["width"], image["height"]), filled(png)) > 0.95 if png.any() else not text
    assert foreground >= len(rels) // 2

    # Polygons instead of RLE: nothing to predict again, the file is assembled from the records.
    again = predict_folder(options(fitted, images, out, formats="png,coco,yolo", batch_size=3, coco_polygons=True,
                                   label="duck toy"))
    assert again["predicted"] == 0 and again["already_done"] == len(rels) + 1
    coco = COCO(str(out / "coco.json"))
    assert coco.dataset["categories"][0]["name"] == "duck toy"
    for ann in coco.dataset["annotations"]:
        assert isinstance(ann["segmentation"], list) and all(len(p) >= 6 for p in ann["segmentation"])
        png = mask_of(out, coco.imgs[ann["image_id"]]["file_name"])
        assert np.array_equal(coco.annToMask(ann).astype(bool), filled(png))  # the pixel outline, holes filled


def test_exports_of_a_known_shape():
    from pycocotools import mask as coco_mask
    from scipy import ndimage

    from fewshotseg.data.exports import coco_record, outer_polygons, yolo_text

    mask = np.zeros((40, 60), bool)
    mask[5:15, 10:30] = True  # a rectangle: rows 5..14, columns 10..29
    mask[20:35, 35:55] = True  # a square with a hole
    mask[25:30, 40:50] = False
    mask[0, 59] = True  # a speck in the corner
    record = coco_record("a/b.jpg", mask)
    rle = {**record["rle"], "counts": record["rle"]["counts"].encode()}
    assert np.array_equal(coco_mask.decode(rle).astype(bool), mask) and record["area"] == mask.sum()
    assert len(record["polygons"]) == 3  # the hole is not a region of its own
    polys = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(record["polygons"], 40, 60))).astype(bool)
    assert np.array_equal(polys, filled(mask))  # straight outlines survive simplification
    rect = min(outer_polygons(mask), key=lambda p: p[:, 0].min())
    assert sorted(map(tuple, rect.tolist())) == [(10, 5), (10, 15), (30, 5), (30, 15)]  # pixel-edge corners

    rng = np.random.default_rng(0)
    for _ in range(20):  # blobs: exact outlines at tolerance 0, close to them at the default 1 px
        blob = ndimage.gaussian_filter(rng.random((50, 70)), rng.uniform(1.5, 4)) > 0.5
        polygons = [p.reshape(-1).tolist() for p in outer_polygons(blob, tolerance=0)]
        drawn = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, 50, 70))).astype(bool)
        assert np.array_equal(drawn, filled(blob))
    rounder = outer_polygons(mask, tolerance=1.0)
    assert len(rounder) == 3 and sum(map(len, rounder)) <= sum(map(len, outer_polygons(mask)))
    rows = yolo_text(outer_polygons(mask), 60, 40).splitlines()
    assert len(rows) == 3 and all(r.startswith("0 ") for r in rows)
    assert iou(yolo_raster("\n".join(rows), 60, 40), filled(mask)) > 0.9
    assert yolo_text(outer_polygons(np.zeros((8, 8), bool)), 8, 8) == ""


# ------------------------------------------------------------------------------------------ resume, shards, workers


def test_a_rerun_skips_what_is_written_and_refuses_other_settings(fitted, tmp_path, one_torch_thread):
    from fewshotseg.errors import UserError
    from fewshotseg.predict import predict_folder

    images, out = tmp_path / "photos", tmp_path / "labels"
    rels = make_tree(images)
    predict_folder(options(fitted, images, out, formats="png,yolo", batch_size=4))
    before = files_under(out / "masks") | files_under(out / "labels")
    times = {p: p.stat().st_mtime_ns for p in (out / "masks").rglob("*.png")}
    again = predict_folder(options(fitted, images, out, formats="png,yolo", batch_size=4))
    assert again["predicted"] == 0 and {p: p.stat().st_mtime_ns for p in times} == times

    lost = out / "masks" / Path(rels[5]).parent / f"{Path(rels[5]).stem}_mask.png"
    lost.unlink()
    third = predict_folder(options(fitted, images, out, formats="png,yolo", batch_size=4))
    assert third["predicted"] == 1 and third["already_done"] == len(rels)  # the counts: images, not batches ...
    assert files_under(out / "masks") | files_under(out / "labels") == before
    # ... though its whole batch went through the network again (the same sums), only the missing file is written
    assert sum(p.stat().st_mtime_ns != t for p, t in times.items()) == 1

    with pytest.raises(UserError, match=r"other settings \(threshold: 0.5 there, 0.6 now\).*--overwrite"):
        predict_folder(options(fitted, images, out, formats="png", batch_size=4, threshold=0.6))
    redone = predict_folder(options(fitted, images, out, formats="png", batch_size=4, threshold=0.6, overwrite=True))
    assert redone["predicted"] == len(rels)


def two_photos(root: Path) -> list[str]:
    """Two fixture photos as <root>/new.jpg and <root>/old.jpg; their relative paths."""
    root.mkdir(parents=True)
    for name, jpg in zip(("new", "old"), sorted(REAL_PHOTOS.glob("*/*.jpg")), strict=False):
        shutil.copy(jpg, root / f"{name}.jpg")
    return ["new.jpg", "old.jpg"]


def test_files_predict_did_not_write_are_refused_and_the_counts_are_true(fitted, tmp_path, capsys,
                                                                         one_torch_thread):
    """An --out holding the user's own files where predict would write: refused, naming them, until --overwrite;
    a re-run only trusts (and skips) the outputs predict itself noted writing there; the counts say what this run
    predicted and what an earlier one did; nothing is said about shards when none was asked for."""
    from fewshotseg.cli import main

    images, out = tmp_path / "photos", tmp_path / "labels"
    two_photos(images)
    (out / "masks").mkdir(parents=True)
    theirs = {"coco.json": b'{"made": "by the user"}\n', "masks/new_mask.png": b"the user's own mask"}
    for name, data in theirs.items():
        (out / name).write_bytes(data)

    def predict(*extra: str, formats: str = "png,coco") -> tuple[int, str, str]:
        code = main(["predict", "--model", str(fitted), "--images", str(images), "--out", str(out), "--format",
                     formats, "--device", "cpu", "--no-progress", *extra])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, said, err = predict()
    assert code == 2 and not said and "Traceback" not in err, err
    assert "already holds 2 file(s) predict would write but did not write there" in err
    assert "coco.json" in err and "masks/new_mask.png" in err and "pass --overwrite" in err
    assert files_under(out) == theirs  # nothing replaced, nothing written (no predict.json, no mask of old.jpg)

    code, said, err = predict("--overwrite")
    assert code == 0, err
    assert said.startswith("predicted 2 image(s)") and "(0 already done by an earlier run, 2 listed)" in said
    assert "shard" not in said + err
    summary = json.loads((out / "predict.json").read_text())
    assert (summary["predicted"], summary["already_done"], summary["shard"]) == (2, 0, None)
    assert all(files_under(out)[name] != data for name, data in theirs.items())  # replaced, as asked
    with Image.open(images / "new.jpg") as im:
        assert mask_of(out, "new.jpg").shape == (im.height, im.width)  # predict's mask now
    coco = json.loads((out / "coco.json").read_text())
    assert sorted(i["file_name"] for i in coco["images"]) == ["new.jpg", "old.jpg"]

    before = files_under(out)
    code, said, _ = predict()  # predict's own outputs: skipped, and said to be done before
    assert code == 0 and said.startswith("predicted 0 image(s)") and "(2 already done by an earlier run" in said
    assert json.loads((out / "predict.json").read_text())["already_done"] == 2
    assert {k: v for k, v in files_under(out).items() if k != "predict.json"} == \
        {k: v for k, v in before.items() if k != "predict.json"}

    (out / "masks" / "old_mask.png").unlink()  # one lost: predicted again, the other one counted as done
    code, said, _ = predict()
    assert code == 0 and said.startswith("predicted 1 image(s)") and "(1 already done by an earlier run" in said
    assert files_under(out)["masks/old_mask.png"] == before["masks/old_mask.png"]

    (out / "labels").mkdir()  # a file of the user's among predict's: refused, although the folder is predict's
    (out / "labels" / "old.txt").write_text("0 0.1 0.1 0.9 0.1 0.5 0.9\n")
    code, _, err = predict(formats="png,coco,yolo")
    assert code == 2 and "already holds 1 file(s) predict would write" in err and "labels/old.txt" in err
    assert not (out / "labels" / "new.txt").exists()
    assert (out / "labels" / "old.txt").read_text() == "0 0.1 0.1 0.9 0.1 0.5 0.9\n"

    code, said, _ = predict("--shard", "0/2")  # with shards, the shard is named
    assert code == 0 and "(2 already done by an earlier run, 2 in shard 0/2 of 2 listed)" in said

    shutil.rmtree(out / "labels")
    shutil.rmtree(out / ".predict-written")  # a folder an earlier fewshotseg wrote, without the note: it resumes
    code, said, err = predict()
    assert code == 0 and said.startswith("predicted 0 image(s)") and "(2 already done by an earlier run" in said, err


def test_a_folder_of_the_users_files_is_named_a_few_then_counted(fitted, tmp_path):
    from fewshotseg.errors import UserError
    from fewshotseg.predict import predict_folder

    images, out = tmp_path / "photos", tmp_path / "labels"
    rels = make_tree(images)
    for rel in rels:  # a mask of the user's for every image, where predict would write its own
        path = out / "masks" / Path(rel).parent / f"{Path(rel).stem}_mask.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"mine")
    first = f"masks/{Path(rels[0]).parent.as_posix()}/{Path(rels[0]).stem}_mask.png"
    with pytest.raises(UserError, match=rf"already holds {len(rels)} file\(s\) .*\({first}, .*, .* and "
                                        rf"{len(rels) - 3} more\); pass --overwrite .* or choose another --out"):
        predict_folder(options(fitted, images, out))
    assert set(files_under(out).values()) == {b"mine"} and len(files_under(out)) == len(rels)


@pytest.mark.slow
def test_two_shards_make_one_run_and_their_coco_files_merge(fitted, tmp_path, one_torch_thread):
    from fewshotseg.cli import main
    from fewshotseg.predict import predict_folder

    images = tmp_path / "photos"
    rels = make_tree(images)
    whole = predict_folder(options(fitted, images, tmp_path / "one", formats="png,coco", batch_size=3))
    shards = [predict_folder(options(fitted, images, tmp_path / "shared", formats="png,coco", batch_size=3,
                                     shard=f"{i}/2", workers=2 - i)) for i in range(2)]  # 2 processes, then this one
    assert all(s["predicted"] for s in shards) and sum(s["predicted"] for s in shards) == whole["predicted"]
    assert sum(s["in_shard"] for s in shards) == whole["in_shard"] == len(rels) + 1  # + the truncated JPEG
    assert files_under(tmp_path / "shared" / "masks") == files_under(tmp_path / "one" / "masks")
    assert len(files_under(tmp_path / "one" / "masks")) == len(rels)

    merged = tmp_path / "merged.json"
    parts = [str(tmp_path / "shared" / f"coco-shard-{i}-of-2.json") for i in range(2)]
    assert main(["predict", "--merge-coco", str(merged), *parts]) == 0
    assert json.loads(merged.read_text()) == json.loads((tmp_path / "one" / "coco.json").read_text())
    assert merged.read_bytes() == (tmp_path / "one" / "coco.json").read_bytes()
    assert main(["predict", "--merge-coco", str(merged), *parts]) == 2  # an existing file is not replaced

    # merged into the shared folder, then a run without --shard: the merged file is predict's own, all is done
    assert main(["predict", "--merge-coco", str(tmp_path / "shared" / "coco.json"), *parts]) == 0
    again = predict_folder(options(fitted, images, tmp_path / "shared", formats="png,coco", batch_size=3))
    assert again["predicted"] == 0 and again["already_done"] == len(rels) + 1
    assert (tmp_path / "shared" / "coco.json").read_bytes() == (tmp_path / "one" / "coco.json").read_bytes()


def test_a_transductive_fit_predicts_each_batch_together(tmp_path, one_torch_thread):
    from fewshotseg.predict import predict_folder
    from fewshotseg.segmenter import FewShotSegmenter

    model = _fit(tmp_path / "together", "transductive")
    images, out = tmp_path / "photos", tmp_path / "labels"
    rels = make_tree(images)[:4]
    for extra in sorted(images.rglob("*.*")):  # 4 images (and their masks) only
        if extra.with_suffix(".jpg").relative_to(images).as_posix() not in rels:
            extra.unlink()
    summary = predict_folder(options(model, images, out, batch_size=2))
    assert summary["batchnorm"].startswith("transductive") and summary["predicted"] == 4
    seg = FewShotSegmenter.from_pretrained(model, device="cpu")
    for pair in (rels[:2], rels[2:]):
        for rel, pred in zip(pair, seg.predict([images / r for r in pair]), strict=True):
            assert np.array_equal(mask_of(out, rel), pred.mask)


# ------------------------------------------------------------------------------------------ tiles


def test_tiles_cover_the_image_and_are_averaged_where_they_overlap():
    from fewshotseg.predict import tile_boxes, tiled_probability

    boxes = tile_boxes(300, 500, 128, 32)
    assert {b[0] for b in boxes} == {0, 96, 172} and {b[1] for b in boxes} == {0, 96, 192, 288, 372}
    assert all(b[2] - b[0] == 128 and b[3] - b[1] == 128 for b in boxes)
    assert tile_boxes(100, 90, 128, 32) == [(0, 0, 100, 90)]

    calls = []

    def predict(tiles):  # tile k of the image predicts the constant k
        calls.append(len(tiles))
        start = sum(calls[:-1])
        return [np.full(t.shape[:2], float(start + i), np.float32) for i, t in enumerate(tiles)]

    prob = tiled_probability(predict, np.zeros((300, 500, 3), np.uint8), 128, 32, batch_size=4, together=False)
    assert calls == [4, 4, 4, 3]  # tiles in batches of 4
    assert prob[0, 0] == 0 and prob[0, 100] == 0.5 and prob[100, 0] == 2.5  # one, two and four tiles averaged
    assert prob[100, 100] == np.mean([0, 1, 5, 6])
    calls.clear()
    tiled_probability(predict, np.zeros((300, 500, 3), np.uint8), 128, 32, batch_size=4, together=True)
    assert calls == [15]  # a transductive batch: every tile of the image together


def test_large_images_are_tiled_above_the_limit(fitted, tmp_path, one_torch_thread):
    from fewshotseg.predict import predict_folder

    images = tmp_path / "photos"
    rels = make_tree(images)
    whole = predict_folder(options(fitted, images, tmp_path / "whole", batch_size=1))
    tiled = predict_folder(options(fitted, images, tmp_path / "tiled", batch_size=1, tile=128, overlap=32,
                                   tile_above=300 * 300))  # the 320 px photos, not the 224 px ones
    assert tiled["predicted"] == whole["predicted"] == len(rels)
    changed = [r for r in rels if not np.array_equal(mask_of(tmp_path / "whole", r), mask_of(tmp_path / "tiled", r))]
    big = [r for r in rels if "eiffel" not in r]
    assert changed and set(changed) <= set(big)  # tiles show the network another scale; the small ones as before
    for r in big:
        with Image.open(images / r) as im:
            assert mask_of(tmp_path / "tiled", r).shape == (im.height, im.width)


# ------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_refused_before_any_work(fitted, tmp_path):
    from fewshotseg.cli import main
    from fewshotseg.errors import UserError
    from fewshotseg.models.efficientlab import ModelConfig
    from fewshotseg.predict import predict_folder
    from fewshotseg.segmenter import FewShotSegmenter

    images = tmp_path / "photos"
    make_tree(images)
    empty = tmp_path / "no-card"
    empty.mkdir()
    init = FewShotSegmenter.from_pretrained("random", model_config=ModelConfig(encoder="tinynet_e"), size=64,
                                            device="cpu").save_pretrained(tmp_path / "init")
    cases = [
        (options(empty, images, tmp_path / "o1"), r"no card.json.*adapt --support DIR .*--save-weights"),
        (options(init, images, tmp_path / "o2"), r"holds an initialization .*not a segmenter fitted.*save_pretrained"),
        (options(fitted, images, images / "labels"), r"--out .* is inside --images"),
        (options(fitted, images, images), r"is inside --images"),
        (options(fitted, images, tmp_path / "notes.txt" / "labels"), r"cannot be written"),
        (options(fitted, tmp_path / "nowhere", tmp_path / "o3"), r"--images .*no such folder"),
        (options(fitted, images, tmp_path / "o4", formats="png,tiff"), r"--format .*png, coco, yolo"),
        (options(fitted, images, tmp_path / "o5", shard="2/2"), r"--shard 2/2"),
        (options(fitted, images, tmp_path / "o6", tile=128, overlap=128), r"--overlap 128"),
    ]
    (tmp_path / "notes.txt").write_text("a file where a folder should be\n")
    for opts, message in cases:
        with pytest.raises(UserError, match=message):
            predict_folder(opts)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7)) and not (images / "labels").exists()
    assert main(["predict", "--model", str(init), "--images", str(images), "--out", str(tmp_path / "o7")]) == 2

    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UserError, match="cannot be written"):
            predict_folder(options(fitted, images, locked / "labels"))


def test_a_folder_with_nothing_to_label_is_refused(fitted, tmp_path, capsys):
    from fewshotseg.cli import main

    empty, other = tmp_path / "empty", tmp_path / "other-types"
    empty.mkdir()
    (empty / ".hidden.jpg").write_bytes(b"hidden")
    (other / "sub").mkdir(parents=True)
    (other / "a.webp").write_bytes(b"RIFF")
    (other / "sub" / "b.tif").write_bytes(b"II*")
    for folder, listed in ((empty, []), (other, ["a.webp", "sub/b.tif"])):
        out = tmp_path / f"out-{folder.name}"
        code = main(["predict", "--model", str(fitted), "--images", str(folder), "--out", str(out), "--device",
                     "cpu", "--no-progress"])
        captured = capsys.readouterr()
        assert code == 2 and not captured.out and "Traceback" not in captured.err, captured.err
        assert f"--images {folder} holds no image to label" in captured.err
        assert ".jpg, .jpeg and .png" in captured.err
        for name in listed:  # what was left out, and why
            assert f"skipped {name}: not a .jpg/.jpeg/.png image" in captured.err
        assert not out.exists()


# ------------------------------------------------------------------------------------------ a killed run


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_files(fitted, tmp_path, one_torch_thread):
    """SIGKILL mid-run (no chance to clean up), then the same command again: the outputs are those of a run that
    was never interrupted, and no output file was ever half-written."""
    from fewshotseg.predict import predict_folder

    images = tmp_path / "photos"
    rels = make_tree(images, copies=3, scale=2.0)
    formats = "png,coco,yolo"
    predict_folder(options(fitted, images, tmp_path / "ref", formats=formats, batch_size=2))
    reference = files_under(tmp_path / "ref")

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "fewshotseg", "predict", "--model", str(fitted), "--images", str(images),
               "--out", str(out), "--format", formats, "--batch-size", "2", "--device", "cpu", "--no-progress"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        while run.poll() is None and len(list((out / "masks").rglob("*.png"))) < 4:
            time.sleep(0.01)
        os.killpg(run.pid, signal.SIGKILL)
    finally:
        run.wait(timeout=60)
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed; give it more images"
    written = files_under(out)
    masks = [k for k in written if k.startswith("masks/")]
    assert 4 <= len(masks) < len(rels), len(masks)
    for name, data in written.items():  # whatever is there is whole: the uninterrupted run's bytes
        if name.startswith(("masks/", "labels/", "coco-records/")):
            assert data == reference[name], name

    summary = predict_folder(options(fitted, images, out, formats=formats, batch_size=2))
    assert 0 < summary["predicted"] < len(rels) and summary["already_done"] >= len(masks) - 1
    resumed = files_under(out)
    for name in [n for n in reference if not n.startswith("predict")]:
        assert resumed[name] == reference[name], name
    assert set(resumed) == set(reference)
    assert not any((out / ".partial").iterdir())  # what the killed process left there is cleaned up
