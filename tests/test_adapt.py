"""`fewshotseg adapt` on real photographs: a mask and an overlay per query image, at the query's own size."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_PHOTOS


@pytest.fixture()
def folders(tmp_path):
    support, query = tmp_path / "support", tmp_path / "query"
    support.mkdir()
    query.mkdir()
    for n in (1, 2, 3):  # the name.jpg + name_mask.png convention
        shutil.copy(REAL_PHOTOS / "eiffel_tower" / f"{n}.jpg", support / f"tower{n}.jpg")
        shutil.copy(REAL_PHOTOS / "eiffel_tower" / f"{n}.png", support / f"tower{n}_mask.png")
    shutil.copy(REAL_PHOTOS / "eiffel_tower" / "4.jpg", query / "tower4.jpg")
    shutil.copy(REAL_PHOTOS / "cat" / "1.jpg", query / "cat.jpg")  # a large photo of another size
    return support, query


def test_adapt_writes_binary_masks_at_each_query_size(folders, tmp_path):
    from fewshotseg.cli import main

    support, query = folders
    out = tmp_path / "out"
    code = main(["adapt", "--init", "random", "--encoder", "tinynet_e", "--support", str(support), "--query",
                 str(query), "--out", str(out), "--size", "64", "--u-steps", "2", "--save-weights"])
    assert code == 0
    for name in ("tower4", "cat"):
        original = Image.open(query / f"{name}.jpg")
        mask = Image.open(out / f"{name}_mask.png")
        assert mask.size == original.size
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
        assert Image.open(out / f"{name}_overlay.png").size == original.size
    assert (out / "adapted" / "model.safetensors").is_file() and (out / "adapted" / "card.json").is_file()


def test_adapt_on_an_fss_style_class_folder_and_onnx_export(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    import torch

    from fewshotseg.adapt import AdaptConfig, adapt
    from fewshotseg.initializations.weights import load_initialization

    support = tmp_path / "duck"
    shutil.copytree(REAL_PHOTOS / "duck_toy", support)
    query = tmp_path / "q"
    query.mkdir()
    shutil.move(support / "3.jpg", query / "3.jpg")
    (support / "3.png").unlink()
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = adapt(AdaptConfig(init="random", support=str(support), query=str(query), out=str(out), size=64,
                                    encoder="tinynet_e", save_weights=True, onnx=True))
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]  # (the tracer's notes: not shown)
    assert summary["support_pairs"] == 2 and len(summary["queries"]) == 1
    session = onnxruntime.InferenceSession(str(out / "adapted.onnx"))
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    (onnx_probs,) = session.run(None, {"image": x})
    model, _ = load_initialization(str(out / "adapted"), None)
    model.eval()
    with torch.no_grad():
        torch_probs = model(torch.from_numpy(x)).softmax(1)[:, 1].numpy()
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-3)  # fp32 conv chains: ~3e-4 apart


def test_adapt_reports_an_unreadable_query_and_a_support_without_pairs(folders, all_foreground_init, tmp_path):
    from fewshotseg.cli import main

    support, query = folders
    (query / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "o"
    # an initialization that predicts foreground everywhere: every written mask must be all 255 (foreground)
    code = main(["adapt", "--init", str(all_foreground_init), "--support", str(support), "--query", str(query),
                 "--out", str(out), "--size", "32", "--u-steps", "1"])
    assert code == 1  # the readable queries were written, the broken one reported
    summary = json.loads((out / "adapt.json").read_text())
    assert sorted(Path(q["query"]).name for q in summary["queries"]) == ["cat.jpg", "tower4.jpg"]
    assert len(summary["failed"]) == 1 and "broken.jpg" in summary["failed"][0]
    assert not list(out.glob("broken_*"))
    for name in ("cat", "tower4"):
        mask = np.asarray(Image.open(out / f"{name}_mask.png"))
        assert mask.shape == np.asarray(Image.open(query / f"{name}.jpg")).shape[:2] and (mask == 255).all()
        photo = np.asarray(Image.open(query / f"{name}.jpg").convert("RGB")).astype(float)
        tinted = np.asarray(Image.open(out / f"{name}_overlay.png").convert("RGB")).astype(float)
        assert np.abs(tinted - (photo / 2 + [127.5, 0, 0])).max() <= 0.5  # every pixel half-way to pure red
    assert all(q["foreground_fraction"] == 1.0 for q in summary["queries"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "photo.jpg").write_bytes((query / "cat.jpg").read_bytes())
    code = main(["adapt", "--init", "random", "--encoder", "tinynet_e", "--support", str(empty), "--query",
                 str(query), "--out", str(tmp_path / "o2"), "--size", "32"])
    assert code == 2


def test_masks_are_saved_in_order_on_the_writer_thread_and_a_failed_save_is_raised():
    from fewshotseg.adapt import save_each

    done: list[int] = []
    save_each(((n,) for n in range(50)), done.append)
    assert done == list(range(50))

    def save(n: int) -> None:
        if n == 3:
            raise OSError(f"disk full writing {n}")
        done.append(n)

    done.clear()
    with pytest.raises(OSError, match="disk full writing 3"):
        save_each(((n,) for n in range(6)), save)
    assert done[:3] == [0, 1, 2]
