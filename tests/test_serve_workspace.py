"""`fewshotseg serve` without a browser: one session's workspace, its bad-input messages and its cleanup; the
server's launch checks (missing shipped initialization, --auth, --host warning)."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_PHOTOS

pytest.importorskip("gradio")

DUCK, CAT = REAL_PHOTOS / "duck_toy", REAL_PHOTOS / "cat"


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory):
    """A tiny initialization folder (tinynet_e, 64 px) written by save_pretrained."""
    import torch

    from fewshotseg.models.efficientlab import ModelConfig
    from fewshotseg.segmenter import FewShotSegmenter

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("init") / "tiny"
    FewShotSegmenter.from_pretrained("random", model_config=ModelConfig(encoder="tinynet_e"), size=64,
                                     device="cpu").save_pretrained(folder)
    return folder


@pytest.fixture()
def ws(tmp_path):
    from fewshotseg.app.workspace import Limits, Workspace

    w = Workspace(tmp_path / "sessions", Limits(max_image_side=400, max_images=3, max_file_mb=1))
    yield w
    w.close()


def test_bad_inputs_are_clear_messages(ws, tmp_path):
    from fewshotseg.errors import UserError

    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    big = tmp_path / "big.png"
    Image.new("RGB", (401, 20)).save(big)
    heavy = tmp_path / "heavy.png"  # over the 1 MB limit: refused before any decoding
    heavy.write_bytes(np.random.default_rng(0).integers(0, 256, 1_200_000, dtype=np.uint8).tobytes())
    added, refused = ws.add_support([text, big, heavy])
    assert added == [] and len(refused) == 3
    assert "notes.jpg is not an image" in refused[0] and "401x20 px" in refused[1] and "up to 400 px" in refused[1]
    assert "heavy.png is 1.2 MB" in refused[2] and "up to 1 MB" in refused[2]
    with pytest.raises(UserError, match="at most 3 support images"):
        ws.add_support([DUCK / "1.jpg"] * 4)
    with pytest.raises(UserError, match="no support image"):
        ws.adapt(None, lr=0.01, steps=1, seed=0)
    added, refused = ws.add_support([DUCK / "1.jpg", text, DUCK / "2.jpg"])  # the readable ones are kept
    assert added == ["1.jpg", "2.jpg"] and len(refused) == 1
    with pytest.raises(UserError, match="painted mask of 1.jpg has no foreground"):
        ws.set_mask("1.jpg", np.zeros((10, 10), bool), "painted")
    with pytest.raises(UserError, match="without a mask: 1.jpg, 2.jpg"):
        ws.adapt(None, lr=0.01, steps=1, seed=0)
    with pytest.raises(UserError, match="mask is 224x224 px but the image is 320x320 px"):
        ws.set_mask("1.jpg", REAL_PHOTOS / "eiffel_tower" / "1.png")  # another image's mask
    with pytest.raises(UserError, match="adapt first"):
        ws.segment()
    with pytest.raises(UserError, match="nothing to download"):
        ws.masks_zip()


def test_names_from_the_browser_never_leave_the_session_folder(ws, tmp_path):
    evil = tmp_path / "..%2F..%2Fetc passwd.png"
    Image.open(DUCK / "1.jpg").save(evil)
    names, _ = ws.add_support([evil, evil])
    assert names == ["_2F.._2Fetc_passwd.png", "_2F.._2Fetc_passwd_2.png"]
    for p in ws.support:
        assert p.path.parent.parent == ws.folder and p.path.is_file()


@pytest.mark.slow
def test_adapt_segment_and_downloads_equal_the_segmenter(ws, tiny_init):
    import torch

    from fewshotseg.app.serve import load_initializations
    from fewshotseg.segmenter import FewShotSegmenter

    (init,) = load_initializations([str(tiny_init)], "cpu")
    ws.add_support([DUCK / "1.jpg", DUCK / "2.jpg"])
    painted = np.zeros((320, 320), bool)  # the duck photos are 320x320 px
    painted[60:200, 90:250] = True
    ws.set_mask("1.jpg", painted, "painted")
    ws.set_mask("2.jpg", DUCK / "2.png")
    ws.add_queries([DUCK / "3.jpg"])
    ws.adapt(init, lr=0.01, steps=2, seed=3)
    ((name, over, mask),) = ws.segment()
    assert name == "3.jpg" and over.shape[:2] == mask.shape == Image.open(DUCK / "3.jpg").size[::-1]

    seg = FewShotSegmenter.from_pretrained(tiny_init, device="cpu")
    params, _ = seg.update_params_for(2, lr=0.01, steps=2)
    seg.fit([DUCK / "1.jpg", DUCK / "2.jpg"], [painted, DUCK / "2.png"], seed=3, update_params=params)
    np.testing.assert_array_equal(mask, seg.predict([DUCK / "3.jpg"])[0].mask)

    with zipfile.ZipFile(ws.masks_zip()) as z:
        assert sorted(z.namelist()) == ["masks/3_mask.png", "settings.json", "support/1_mask.png",
                                        "support/2_mask.png"]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(z.read("support/1_mask.png")))) > 0, painted)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(z.read("masks/3_mask.png")))) > 0, mask)
    assert ws.weights().name == "model.safetensors" and (ws.weights().parent / "card.json").is_file()
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(ws.onnx()))
    x = np.asarray(Image.open(DUCK / "3.jpg").convert("RGB").resize((64, 64), Image.BILINEAR))  # network size
    (probability,) = session.run(None, {"image": (x.astype(np.float32) / 255).transpose(2, 0, 1)[None]})
    adapted = ws.segmenter.predict([x])[0].probability
    np.testing.assert_allclose(probability[0], adapted, atol=1e-3)  # the adapted network, support statistics
    assert np.abs(adapted - seg.init.eval()(torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255)
                  .softmax(1)[0, 1].detach().numpy()).max() > 1e-2  # (not the initialization)


def test_a_session_ending_removes_its_folder(tmp_path):
    from fewshotseg.app.page import Sessions
    from fewshotseg.app.workspace import Limits

    class Request:
        session_hash = "abc"

    sessions = Sessions(tmp_path, Limits())
    ws = sessions.get(None, Request())
    ws.add_support([DUCK / "1.jpg"])
    assert ws.folder.is_dir() and sessions.get(ws, Request()) is ws
    sessions.end(Request())
    assert not ws.folder.exists() and ws.closed


def test_painted_mask_reads_the_brush_layer():
    from fewshotseg.app.page import painted_mask
    from fewshotseg.errors import UserError

    layer = np.zeros((4, 5, 4), np.uint8)
    layer[1:3, 2, :] = (255, 0, 0, 153)
    np.testing.assert_array_equal(painted_mask({"layers": [layer]}), layer[..., 3] > 0)
    with pytest.raises(UserError, match="nothing painted"):
        painted_mask({"background": layer, "layers": []})


def test_serve_without_the_shipped_initialization_says_to_pass_init(monkeypatch, capsys):
    import fewshotseg.initializations.weights as initialization
    from fewshotseg.cli import main

    def missing(name):
        raise initialization.UnreadableWeights(f"the packaged initialization {name!r} is missing")

    monkeypatch.setattr(initialization, "packaged_folder", missing)
    assert main(["serve", "--port", "1"]) == 2
    assert "pass --init FOLDER" in capsys.readouterr().err


def test_auth_and_host_checks(capsys):
    from fewshotseg.app.serve import parse_auth
    from fewshotseg.cli import main
    from fewshotseg.errors import SettingError

    assert parse_auth("ann:s3c:ret") == ("ann", "s3c:ret") and parse_auth("") is None
    with pytest.raises(SettingError, match="USER:PASS"):
        parse_auth("ann")
    assert main(["serve", "--auth", "nopassword", "--init", "random"]) == 2
    assert "--auth USER:PASS" in capsys.readouterr().err
    assert main(["serve", "--host", "0.0.0.0", "--init", str(REAL_PHOTOS / "no-such-init")]) == 2
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0" in err and "without a password" in err and "no-such-init" in err


@pytest.mark.slow
@pytest.mark.parametrize("method", ["probe", "prototype"])
def test_the_page_gives_the_apis_masks_for_every_method(ws, tiny_init, method):
    from fewshotseg.app.workspace import Initialization
    from fewshotseg.errors import UserError
    from fewshotseg.segmenter import FewShotSegmenter

    added, _ = ws.add_support([DUCK / "1.jpg", DUCK / "2.jpg"])
    for name, n in zip(added, (1, 2), strict=True):
        ws.set_mask(name, DUCK / f"{n}.png")
    ws.add_queries([DUCK / "3.jpg"])
    init = Initialization("tiny", FewShotSegmenter.from_pretrained(tiny_init, device="cpu"))
    text = ws.adapt(init, lr=None, steps=None, seed=0, method=method)  # lr and steps are U's: not needed here
    assert method in text and not ws.fine_tuned
    page_mask = ws.segment()[0][2]
    seg = FewShotSegmenter.from_pretrained(tiny_init, device="cpu")
    seg.fit([DUCK / "1.jpg", DUCK / "2.jpg"], [DUCK / "1.png", DUCK / "2.png"], method=method)
    np.testing.assert_array_equal(page_mask, seg.predict([DUCK / "3.jpg"])[0].mask)
    assert ws.savable and ws.weights().is_file()  # the fitted head is kept beside the frozen network
    loaded = FewShotSegmenter.from_pretrained(ws.weights().parent, device="cpu")
    np.testing.assert_array_equal(loaded.predict([DUCK / "3.jpg"])[0].mask, page_mask)
    ws.adapt(init, lr=None, steps=None, seed=0, method="rf")
    assert not ws.savable
    with pytest.raises(UserError, match="pickle"):
        ws.weights()


class Predicted:
    """A stand-in adapted segmenter whose prediction for every query is the top `rows` rows."""

    def __init__(self, rows: int):
        self.rows = rows

    def predict(self, images):
        from types import SimpleNamespace

        out = []
        for rgb in images:
            mask = np.zeros(rgb.shape[:2], bool)
            mask[: self.rows] = True
            out.append(SimpleNamespace(mask=mask))
        return out


def test_a_corrected_prediction_joins_the_support_set_with_its_share_of_pixels_changed(ws):
    from fewshotseg.app.page import corrections_text
    from fewshotseg.errors import UserError

    ws.add_support([CAT / "3.jpg"])  # a support image named like a query
    ws.set_mask("3.jpg", CAT / "3.png")
    ws.add_queries([DUCK / "3.jpg", CAT / "1.jpg"])
    with pytest.raises(UserError, match="no prediction to correct yet"):
        ws.correct("3.jpg", np.ones((320, 320), bool))
    ws.segmenter = Predicted(rows=100)  # an adapted network, as `adapt` leaves one
    ws.segment()
    with pytest.raises(UserError, match="choose a predicted query"):
        ws.correct("no-such.jpg", np.ones((320, 320), bool))
    with pytest.raises(UserError, match="corrected mask of 3.jpg has no foreground: paint over the object"):
        ws.correct("3.jpg", np.zeros((320, 320), bool))  # refused like an empty painted mask ...
    assert [q.name for q in ws.queries] == ["3.jpg", "1.jpg"] and len(ws.results) == 2  # ... and nothing lost

    corrected = np.zeros((320, 320), bool)  # the prediction is rows 0-99: erase rows 80-99, paint rows 200-209
    corrected[:80] = True
    corrected[200:210] = True
    pair = ws.correct("3.jpg", corrected)
    assert pair.name == "3_2.jpg" and pair.mask_source == "corrected"
    assert pair.changed == 30 / 320  # 30 of 320 rows changed their label: exactly 9.375 % of the pixels
    assert ws.pair("3_2.jpg") is pair and pair.path.parent == ws.folder / "support" and pair.path.is_file()
    np.testing.assert_array_equal(pair.mask, corrected)
    assert [q.name for q in ws.queries] == ["1.jpg"] and [r[0] for r in ws.results] == ["1.jpg"]
    assert ws.segmenter is not None  # the other predictions and the network stay until the next Adapt

    half = np.zeros((160, 160), bool)  # a canvas of another size is read at the image's size
    half[:40] = True
    assert ws.correct("1.jpg", half).changed == 20 / 320
    assert ws.corrections() == [("3_2.jpg", 30 / 320), ("1.jpg", 20 / 320)]
    assert corrections_text(ws) == "**2 corrected**: 9.4 %, 6.2 % of pixels changed"
    assert not ws.queries and not ws.results
    with zipfile.ZipFile(ws.masks_zip()) as z:  # the corrected masks are downloadable before adapting again
        assert sorted(z.namelist()) == ["settings.json", "support/1_mask.png", "support/3_2_mask.png",
                                        "support/3_mask.png"]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(z.read("support/3_2_mask.png")))) > 0,
                                      corrected)
        assert "3_2.jpg" in z.read("settings.json").decode()

    ws.set_mask("1.jpg", CAT / "1.png")  # a mask set by hand is no longer a corrected prediction
    assert ws.corrections() == [("3_2.jpg", 30 / 320)]
    ws.add_queries([DUCK / "2.jpg"])
    ws.segmenter = Predicted(rows=10)
    ws.segment()
    with pytest.raises(UserError, match="at most 3 support images"):  # the support set is full: the query stays
        ws.correct("2.jpg", corrected)
    assert [q.name for q in ws.queries] == ["2.jpg"] and len(ws.results) == 1


@pytest.mark.slow
def test_adapting_again_uses_the_corrected_mask_not_the_prediction(ws, tiny_init):
    from fewshotseg.app.serve import load_initializations
    from fewshotseg.data.images import read_mask
    from fewshotseg.segmenter import FewShotSegmenter

    (init,) = load_initializations([str(tiny_init)], "cpu")
    ws.add_support([DUCK / "1.jpg", DUCK / "2.jpg"])
    ws.set_mask("1.jpg", DUCK / "1.png")
    ws.set_mask("2.jpg", DUCK / "2.png")
    ws.add_queries([DUCK / "3.jpg", CAT / "1.jpg"])
    ws.adapt(init, lr=0.01, steps=2, seed=0)
    predicted = ws.segment()[0][2]
    truth = read_mask(DUCK / "3.png").astype(bool)
    pair = ws.correct("3.jpg", truth)
    assert pair.changed == np.mean(truth != predicted)
    assert [p.name for p in ws.labelled()] == ["1.jpg", "2.jpg", "3.jpg"]
    ws.adapt(init, lr=0.01, steps=2, seed=0)
    ((name, _, mask),) = ws.segment()
    probability = ws.segmenter.predict([CAT / "1.jpg"])[0].probability

    def refit(third: np.ndarray) -> np.ndarray:
        seg = FewShotSegmenter.from_pretrained(tiny_init, device="cpu")
        params, _ = seg.update_params_for(3, lr=0.01, steps=2)
        seg.fit([DUCK / "1.jpg", DUCK / "2.jpg", DUCK / "3.jpg"], [DUCK / "1.png", DUCK / "2.png", third], seed=0,
                update_params=params)
        return seg.predict([CAT / "1.jpg"])[0]

    with_correction = refit(truth)
    assert name == "1.jpg" and ws.settings["support"] == ["1.jpg", "2.jpg", "3.jpg"]
    np.testing.assert_array_equal(mask, with_correction.mask)
    np.testing.assert_array_equal(probability, with_correction.probability)
    assert not np.array_equal(probability, refit(predicted).probability)  # the prediction would give another


def test_objects_are_named_painted_and_renamed_with_messages(ws, tmp_path):
    from fewshotseg.errors import UserError

    assert ws.classes == ["object"] and not ws.multiclass  # one object by default: the page as before
    ws.add_support([DUCK / "1.jpg", CAT / "2.jpg"])
    duck = np.zeros((320, 320), bool)
    duck[50:150, 50:150] = True
    ws.set_mask("1.jpg", duck, "painted")
    assert ws.set_classes("duck, cat") == "'object' is now 'duck' (1 mask(s) kept); 'cat' added: mark it on the " \
                                         "support images"
    assert ws.classes == ["duck", "cat"] and ws.multiclass
    np.testing.assert_array_equal(ws.pair("1.jpg").masks["duck"], duck)
    for bad, message in (("", "name at least one object"), ("duck, duck", "named twice: duck"),
                         ("a/b", "'a/b': use letters")):
        with pytest.raises(UserError, match=message):
            ws.set_classes(bad)
    with pytest.raises(UserError, match="no object named 'dog'"):
        ws.set_mask("2.jpg", duck, "painted", cls="dog")
    with pytest.raises(UserError, match="painted cat mask of 2.jpg has no foreground: paint over the cat"):
        ws.set_mask("2.jpg", np.zeros((320, 320), bool), "painted", cls="cat")
    ws.set_mask("2.jpg", CAT / "2.png", cls="cat")  # a binary (0/1) mask is the chosen object's
    with pytest.raises(UserError, match="no support image has any pixel of 'duck'.*remove it from the objects"):
        ws.remove_support("1.jpg") or ws.adapt(None, lr=0.01, steps=1, seed=0)
    ws.add_support([DUCK / "1.jpg"])
    ws.set_mask("1.jpg", duck, "painted", cls="duck")

    cat = np.zeros((320, 320), bool)  # painted over part of the duck: those pixels become the cat's
    cat[100:200, 100:200] = True
    note = ws.set_mask("1.jpg", cat, "painted", cls="cat")
    assert note == "1.jpg: 2500 px from duck now belong to cat (a pixel belongs to one object: the one marked last)"
    p = ws.pair("1.jpg")
    assert not (p.masks["duck"] & p.masks["cat"]).any() and p.masks["duck"].sum() == 10000 - 2500
    assert np.unique(p.labels(ws.classes)).tolist() == [0, 1, 2]
    assert ws.set_mask("1.jpg", np.zeros((320, 320), bool), "painted", cls="cat") == "cat cleared from 1.jpg"
    assert list(p.masks) == ["duck"]

    labels = np.zeros((320, 320), np.uint8)  # an uploaded indexed mask (values 1 duck, 2 cat) sets both at once
    labels[:100], labels[200:] = 1, 2
    Image.fromarray(labels).save(tmp_path / "indexed.png")
    assert ws.set_mask("1.jpg", tmp_path / "indexed.png") == "1.jpg: read as an indexed mask: duck 32000 px, " \
                                                                "cat 38400 px"
    np.testing.assert_array_equal(ws.pair("1.jpg").labels(ws.classes), labels)

    assert ws.set_classes(["cat"]) == "'duck' removed with its mask(s) on 1 image(s)"
    assert not ws.multiclass and [list(p.masks) for p in ws.support] == [["cat"], ["cat"]]
    np.testing.assert_array_equal(ws.pair("1.jpg").mask, labels == 2)


@pytest.mark.slow
def test_two_objects_fit_a_multiclass_segmenter_and_give_its_masks(ws, tiny_init):
    from fewshotseg.app.serve import load_initializations
    from fewshotseg.data.images import read_label_map, read_mask
    from fewshotseg.multiclass import MultiClassSegmenter
    from fewshotseg.segmenter import FewShotSegmenter

    (init,) = load_initializations([str(tiny_init)], "cpu")
    ws.add_support([DUCK / "1.jpg", CAT / "2.jpg"])
    ws.set_classes("duck, cat")
    ws.set_mask("1.jpg", DUCK / "1.png", cls="duck")
    painted = read_mask(CAT / "2.png").astype(bool)
    ws.set_mask("2.jpg", painted, "painted", cls="cat")
    ws.add_queries([DUCK / "3.jpg", CAT / "3.jpg"])
    text = ws.adapt(init, lr=None, steps=None, seed=1, method="prototype")  # one prototype per object
    assert "2 objects (duck, cat; one-vs-rest)" in text and isinstance(ws.segmenter, MultiClassSegmenter)
    results = ws.segment()
    assert [r[0] for r in results] == ["3.jpg", "3_2.jpg"] and not ws.fine_tuned

    api = MultiClassSegmenter.from_pretrained(tiny_init, device="cpu")
    api.fit([DUCK / "1.jpg", CAT / "2.jpg"], {"duck": [DUCK / "1.png", None], "cat": [None, painted]},
            method="prototype", seed=1)
    expected = api.predict([DUCK / "3.jpg", CAT / "3.jpg"])
    assert all({1, 2} <= set(np.unique(p.labels)) and p.contested > 0 for p in expected)  # both objects, overlaps
    for (_, over, labels), pred in zip(results, expected, strict=True):
        np.testing.assert_array_equal(labels, pred.labels)
        assert over.shape == (*labels.shape, 3)
    assert ws.contested == {"3.jpg": expected[0].contested, "3_2.jpg": expected[1].contested}

    with zipfile.ZipFile(ws.masks_zip()) as z:
        assert sorted(z.namelist()) == [
            "masks/3_2_cat_mask.png", "masks/3_2_duck_mask.png", "masks/3_2_mask.png", "masks/3_cat_mask.png",
            "masks/3_duck_mask.png", "masks/3_mask.png", "masks/classes.txt", "settings.json",
            "support/1_mask.png", "support/2_mask.png", "support/classes.txt"]
        assert z.read("masks/classes.txt") == b"duck\ncat\n"
        indexed = Image.open(io.BytesIO(z.read("masks/3_2_mask.png")))
        assert indexed.mode == "P"
        np.testing.assert_array_equal(np.asarray(indexed), expected[1].labels)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(z.read("masks/3_duck_mask.png")))) > 0,
                                      expected[0].masks["duck"])
        support = read_label_map(Image.open(io.BytesIO(z.read("support/2_mask.png"))), CAT / "2.jpg", (320, 320),
                                 "2")
        np.testing.assert_array_equal(support, painted * 2)
        settings = json.loads(z.read("settings.json"))
        assert settings["classes"] == ["duck", "cat"] and settings["contested_pixels"] == ws.contested

    folder = ws.weights()
    assert folder.name == "adapted.zip"
    with zipfile.ZipFile(folder) as z:
        z.extractall(folder.parent / "unzipped")
    loaded = MultiClassSegmenter.from_pretrained(folder.parent / "unzipped" / "adapted", device="cpu")
    np.testing.assert_array_equal(loaded.predict([CAT / "3.jpg"])[0].labels, expected[1].labels)

    # back to one object: the FewShotSegmenter path, on that object's masks alone
    ws.remove_support("2.jpg")
    assert ws.set_classes("duck") == "'cat' removed"
    ws.adapt(init, lr=0.01, steps=2, seed=1)
    assert isinstance(ws.segmenter, FewShotSegmenter) and ws.fine_tuned
    seg = FewShotSegmenter.from_pretrained(tiny_init, device="cpu")
    params, _ = seg.update_params_for(1, lr=0.01, steps=2)
    seg.fit([DUCK / "1.jpg"], [DUCK / "1.png"], seed=1, update_params=params)
    np.testing.assert_array_equal(ws.segment()[0][2], seg.predict([DUCK / "3.jpg"])[0].mask)


def test_correcting_one_object_of_a_prediction_keeps_the_others(ws):
    ws.set_classes("duck, cat")
    ws.add_queries([DUCK / "3.jpg"])
    predicted = np.zeros((320, 320), np.uint8)  # rows 0-99 duck, rows 100-199 cat
    predicted[:100], predicted[100:200] = 1, 2
    ws.segmenter = Predicted(rows=0)  # an adapted network, and its result for the query
    ws.results = [("3.jpg", np.zeros((320, 320, 3), np.uint8), predicted)]
    assert list(ws.prediction("3.jpg").masks) == ["duck", "cat"]
    cat = np.zeros((320, 320), bool)  # the cat really is rows 50-199: it takes rows 50-99 from the duck
    cat[50:200] = True
    pair = ws.correct("3.jpg", cat, cls="cat")
    expected = predicted.copy()
    expected[50:100] = 2
    np.testing.assert_array_equal(pair.labels(ws.classes), expected)
    assert pair.changed == 50 / 320 and pair.mask_source == "corrected"


def test_corrected_mask_applies_red_and_blue_strokes_to_the_prediction():
    from fewshotseg.app.page import corrected_mask
    from fewshotseg.errors import UserError

    predicted = np.zeros((4, 6), bool)
    predicted[:, :3] = True
    layer = np.zeros((4, 6, 4), np.uint8)
    layer[0, 4] = (255, 0, 0, 153)  # red: add
    layer[1, 1] = (0, 0, 255, 153)  # blue: remove
    layer[2, 2] = (102, 0, 153, 214)  # blue painted over red: the top stroke (blue) wins
    layer[3, 5] = (255, 0, 0, 0)  # erased: nothing
    expected = predicted.copy()
    expected[0, 4], expected[1, 1], expected[2, 2] = True, False, False
    np.testing.assert_array_equal(corrected_mask({"background": layer, "layers": [layer]}, predicted), expected)
    half = layer[::2, ::2]  # strokes on a canvas of another size are read on the prediction's grid
    assert corrected_mask({"background": half, "layers": [half]}, predicted).shape == (4, 6)
    np.testing.assert_array_equal(corrected_mask({"background": layer, "layers": []}, predicted), predicted)
    with pytest.raises(UserError, match="open a prediction in the correction editor first"):
        corrected_mask(None, predicted)


def test_an_empty_prediction_opens_and_is_corrected_by_painting_the_object(ws):
    from fewshotseg.app.page import _prediction_value, corrected_mask
    from fewshotseg.errors import UserError

    ws.add_queries([DUCK / "3.jpg"])
    ws.segmenter = Predicted(rows=0)  # nothing predicted
    ws.segment()
    value = _prediction_value(ws.prediction("3.jpg"))
    assert value["background"].shape[:2] == (320, 320) and value["layers"] == []
    with pytest.raises(UserError, match="corrected mask of 3.jpg has no foreground"):
        ws.correct("3.jpg", corrected_mask(value, np.zeros((320, 320), bool)))
    layer = np.zeros((320, 320, 4), np.uint8)
    layer[:32] = (255, 0, 0, 153)  # a red stroke over the top tenth
    pair = ws.correct("3.jpg", corrected_mask({**value, "layers": [layer]}, np.zeros((320, 320), bool)))
    assert pair.changed == 0.1 and pair.mask[:32].all() and not pair.mask[32:].any()


def _duck_and_cat(ws, tiny_init):
    """The workspace with two objects, each painted on one support image; the tiny initialization."""
    from fewshotseg.app.serve import load_initializations

    (init,) = load_initializations([str(tiny_init)], "cpu")
    ws.add_support([DUCK / "1.jpg", CAT / "2.jpg"])
    ws.set_classes("duck, cat")
    ws.set_mask("1.jpg", DUCK / "1.png", cls="duck")
    ws.set_mask("2.jpg", CAT / "2.png", cls="cat")
    return init


def test_several_objects_report_progress_over_every_object(ws, tiny_init):
    init = _duck_and_cat(ws, tiny_init)
    seen: list[int] = []
    ws.adapt(init, lr=0.01, steps=3, seed=0, method="finetune", progress=seen.append)
    # one-vs-rest fine-tuning: U's 3 steps for the duck, then 3 for the cat, counted on from the duck's
    assert seen == [1, 2, 3, 4, 5, 6]


def test_several_objects_take_the_chosen_strategy(ws, tiny_init):
    from fewshotseg.errors import UserError

    init = _duck_and_cat(ws, tiny_init)
    for strategy in ("joint", "one-vs-rest"):
        text = ws.adapt(init, lr=None, steps=None, seed=0, method="probe", strategy=strategy)
        assert ws.segmenter.strategy == strategy and f"; {strategy})" in text
    with pytest.raises(UserError, match="joint strategy"):  # a softmax head on the probe's features only
        ws.adapt(init, lr=None, steps=None, seed=0, method="prototype", strategy="joint")
