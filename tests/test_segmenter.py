"""The practitioner's path: self-describing initializations (cards), `FewShotSegmenter`, and `adapt` on photos."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_PHOTOS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory):
    """A small initialization folder (tinynet_e at 64 px) with a card that asks for 2 SGD steps at lr 0.01."""
    import torch

    from fewshotseg.initializations.card import Card
    from fewshotseg.models.efficientlab import ModelConfig
    from fewshotseg.segmenter import FewShotSegmenter

    torch.manual_seed(0)
    seg = FewShotSegmenter.from_pretrained("random", model_config=ModelConfig(encoder="tinynet_e"), size=64)
    card = Card(name="tiny", model={}, size=64, summary="a test initialization",
                update_params={"default": {"lr": 0.01, "steps": 2, "bn_policy": "transductive", "source": "test"},
                               "5": {"lr": 0.02, "steps": 3, "bn_policy": "transductive", "source": "tune: t"}},
                training={"data": "none"})
    seg.card = card
    folder = tmp_path_factory.mktemp("init") / "tiny"
    seg.save_pretrained(folder)
    return folder


def test_card_round_trips_and_gives_u_per_shot_count(tiny_init):
    from fewshotseg.initializations.card import read_card
    from fewshotseg.segmenter import FewShotSegmenter

    card = read_card(tiny_init)
    assert card.size == 64 and card.model["encoder"] == "tinynet_e" and card.weights["bytes"] > 0
    assert "tinynet_e" in (tiny_init / "README.md").read_text()
    seg = FewShotSegmenter.from_pretrained(tiny_init)
    assert seg.card.to_json() == card.to_json() and seg.size == 64
    one, source1 = seg.update_params_for(1)  # nearest tuned shot count: 5
    assert (one.lr, one.steps) == (0.02, 3) and "tune: t" in source1 and "5-shot" in source1
    paper, source = seg.update_params_for(1, preset="paper")
    assert (paper.lr, paper.steps, paper.bn_policy) == (0.005, 5, "paper") and "paper" in source
    over, source = seg.update_params_for(5, lr=0.001)
    assert over.lr == 0.001 and over.steps == 3 and "lr=0.001" in source
    # a tune result replaces the entry and keeps the old one in the history
    card.set_update_params(5, {"lr": 0.03, "steps": 4}, "tune: u")
    assert card.update_params["5"]["lr"] == 0.03 and card.history[-1]["lr"] == 0.02


def test_a_card_that_does_not_match_its_weights_is_refused(tiny_init, tmp_path):
    from fewshotseg.errors import UserError
    from fewshotseg.segmenter import FewShotSegmenter

    other = tmp_path / "other"
    shutil.copytree(tiny_init, other)
    card = json.loads((other / "card.json").read_text())
    card["model"]["encoder"] = "tf_efficientnet_b0"
    (other / "card.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match="tf_efficientnet_b0.*tinynet_e"):
        FewShotSegmenter.from_pretrained(other)
    card["model"]["encoder"], card["size"] = "tinynet_e", 224
    (other / "card.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match="224 px.*64 px"):
        FewShotSegmenter.from_pretrained(other)


def _pairs(name: str, ns=(1, 2)):
    return [REAL_PHOTOS / name / f"{n}.jpg" for n in ns], [REAL_PHOTOS / name / f"{n}.png" for n in ns]


@pytest.mark.slow
def test_support_statistics_make_each_query_independent_of_the_others(tiny_init):
    from fewshotseg.segmenter import FewShotSegmenter

    seg = FewShotSegmenter.from_pretrained(tiny_init)
    seg.fit(*_pairs("duck_toy"), seed=1, stats="support")
    assert seg.params.bn_policy == "support"
    queries = [REAL_PHOTOS / "duck_toy" / "3.jpg", REAL_PHOTOS / "cat" / "1.jpg"]
    together = seg.predict(queries)
    alone = seg.predict(queries[:1])
    # equal up to float summation order (a batch of 2 and of 1 take different convolution paths)
    np.testing.assert_allclose(together[0].probability, alone[0].probability, atol=1e-4)
    np.testing.assert_array_equal(together[0].mask, alone[0].mask)
    assert together[1].mask.shape == Image.open(queries[1]).size[::-1]


PORTRAIT = (28, 0, 196, 224)  # a 168 x 224 crop: turning it by 90 degrees changes its size


def _with_orientation(src, dst, orientation: int, *, mask: bool = False):
    """Store `src` (cropped to PORTRAIT) turned so that EXIF `orientation` turns it back upright (lossless PNG)."""
    undo = {6: Image.ROTATE_90, 8: Image.ROTATE_270, 3: Image.ROTATE_180}[orientation]
    im = Image.open(src).crop(PORTRAIT)
    im = im.convert("L") if mask else im.convert("RGB")
    stored = im.transpose(undo)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(dst, exif=exif)
    return stored


def test_exif_rotated_support_and_query_give_the_upright_masks(tiny_init, tmp_path):
    from fewshotseg.segmenter import FewShotSegmenter

    upright_dir, turned_dir = tmp_path / "up", tmp_path / "turned"
    upright_dir.mkdir(), turned_dir.mkdir()
    images, masks = _pairs("eiffel_tower", (1, 2, 3))
    up_i, up_m, tu_i, tu_m = [], [], [], []
    for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
        up_i.append(upright_dir / f"{k}.png")
        Image.open(image).crop(PORTRAIT).convert("RGB").save(up_i[-1])
        up_m.append(upright_dir / f"{k}_mask.png")
        Image.open(mask).crop(PORTRAIT).convert("L").save(up_m[-1])
        tu_i.append(turned_dir / f"{k}.png")
        _with_orientation(image, tu_i[-1], (6, 8, 3)[k])
        if k == 0:  # a mask stored on the turned pixel grid with its own EXIF tag
            tu_m.append(turned_dir / f"{k}_mask.png")
            _with_orientation(mask, tu_m[-1], 6, mask=True)
        elif k == 1:  # a mask stored on the turned pixel grid without a tag: the image's tag applies
            tu_m.append(turned_dir / f"{k}_mask.png")
            Image.open(up_m[-1]).transpose(Image.ROTATE_270).save(tu_m[-1])
        else:  # a mask drawn on the upright picture
            tu_m.append(up_m[-1])
    query_up = tmp_path / "q.png"
    Image.open(REAL_PHOTOS / "eiffel_tower" / "4.jpg").crop(PORTRAIT).convert("RGB").save(query_up)
    query_turned = tmp_path / "q_turned.png"
    _with_orientation(REAL_PHOTOS / "eiffel_tower" / "4.jpg", query_turned, 6)

    a = FewShotSegmenter.from_pretrained(tiny_init).fit(up_i, up_m, seed=3).predict([query_up])[0]
    b = FewShotSegmenter.from_pretrained(tiny_init).fit(tu_i, tu_m, seed=3).predict([query_turned])[0]
    assert b.mask.shape == Image.open(query_up).size[::-1]
    np.testing.assert_array_equal(a.mask, b.mask)


@pytest.mark.parametrize("method", ["card", "probe", "prototype", "rf"])
def test_the_python_api_and_the_cli_give_identical_masks(tiny_init, tmp_path, method):
    from fewshotseg.cli import main
    from fewshotseg.segmenter import FewShotSegmenter

    support, query = tmp_path / "s", tmp_path / "q"
    shutil.copytree(REAL_PHOTOS / "colorful_sneaker", support)
    query.mkdir()
    shutil.move(support / "3.jpg", query / "3.jpg")
    (support / "3.png").unlink()
    shutil.copy(REAL_PHOTOS / "cat" / "2.jpg", query / "cat.jpg")
    assert main(["adapt", "--init", str(tiny_init), "--support", str(support), "--query", str(query),
                 "--out", str(tmp_path / "out"), "--seed", "4", "--method", method]) == 0
    summary = json.loads((tmp_path / "out" / "adapt.json").read_text())
    seg = FewShotSegmenter.from_pretrained(tiny_init)
    seg.fit(*_pairs("colorful_sneaker"), seed=4, method=method)
    if method == "card":  # the card's method is U, with its 5-shot entry (transductive: the queries go together)
        assert summary["update_params"]["steps"] == 3 and "card of tiny: tune: t" in summary["update_params_source"]
        assert summary["method"]["method"] == "finetune" and summary["bn_policy"] == "transductive"
    else:
        assert summary["method"]["method"] == method and summary["update_params"] is None
    api = seg.predict([query / "3.jpg", query / "cat.jpg"])
    for name, pred in zip(("3", "cat"), api, strict=True):
        cli_mask = np.asarray(Image.open(tmp_path / "out" / f"{name}_mask.png")) > 0
        np.testing.assert_array_equal(cli_mask, pred.mask)


def test_support_without_foreground_is_refused_with_its_name(tiny_init, tmp_path, capsys):
    from fewshotseg.cli import main

    support, query = tmp_path / "s", tmp_path / "q"
    shutil.copytree(REAL_PHOTOS / "duck_toy", support)
    query.mkdir()
    shutil.copy(REAL_PHOTOS / "cat" / "1.jpg", query / "a.jpg")
    Image.fromarray(np.zeros(Image.open(support / "2.png").size[::-1], np.uint8)).save(support / "2.png")
    before = {p.name: p.read_bytes() for p in support.iterdir()}
    code = main(["adapt", "--init", str(tiny_init), "--support", str(support), "--query", str(query),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "2.jpg" in err and "foreground" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in support.iterdir()} == before


@pytest.mark.slow
@pytest.mark.parametrize("where", ["support", "query", "previous"])
def test_adapt_never_writes_over_the_users_files(tiny_init, tmp_path, capsys, where):
    from fewshotseg.cli import main

    support, query = tmp_path / "s", tmp_path / "q"
    shutil.copytree(REAL_PHOTOS / "duck_toy", support)
    query.mkdir()
    shutil.copy(REAL_PHOTOS / "cat" / "1.jpg", query / "cat.jpg")
    args = ["adapt", "--init", str(tiny_init), "--support", str(support), "--query", str(query)]
    out = {"support": support, "query": query, "previous": tmp_path / "o"}[where]
    if where == "previous":
        assert main([*args, "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and ("--overwrite" in err if where == "previous" else where in err)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    if where == "previous":
        assert main([*args, "--out", str(out), "--overwrite"]) == 0


@pytest.mark.slow
def test_adapt_by_default_uses_the_shipped_general_initialization(tmp_path):
    """No --init, no --update-params: every real-photo query gets a non-empty mask."""
    from fewshotseg.cli import main

    for name in ("cat", "colorful_sneaker", "duck_toy", "eiffel_tower"):
        support, query = tmp_path / name / "s", tmp_path / name / "q"
        shutil.copytree(REAL_PHOTOS / name, support)
        query.mkdir()
        last = sorted(support.glob("*.jpg"))[-1]
        shutil.move(last, query / last.name)
        (support / f"{last.stem}.png").unlink()
        assert main(["adapt", "--support", str(support), "--query", str(query), "--out", str(tmp_path / name / "o")]) == 0
        summary = json.loads((tmp_path / name / "o" / "adapt.json").read_text())
        assert "general" in summary["init"] and "card of general" in summary["method_source"]
        assert summary["method"]["method"] == "probe"  # the shipped default: the card's method
        for q in summary["queries"]:
            assert q["foreground_fraction"] > 0, q
