"""`fewshotseg serve` in a real browser: Playwright drives Debian's chromium (headless) against a server on
127.0.0.1 in this process. Deselect with `-m "not browser"`; CI runs them (.ci/run installs chromium).

Every wait is bounded (WAIT ms, or ADAPT ms around the network's work), so a broken page fails, never hangs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_PHOTOS

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WAIT = 20_000  # ms for a page reaction
ADAPT = 120_000  # ms for an adaptation (a few steps of a tiny network; two pages share one queue slot)
STEPS = 2
CORRECT_LR, CORRECT_STEPS = 0.05, 20  # enough for the tiny random network to mark some pixels, so masks can differ
LONG_STEPS = 60  # an adaptation that lasts seconds, so that another page's click finds it running
DUCK, CAT = REAL_PHOTOS / "duck_toy", REAL_PHOTOS / "cat"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory) -> Path:
    import torch

    from fewshotseg.models.efficientlab import ModelConfig
    from fewshotseg.segmenter import FewShotSegmenter

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("init") / "tiny"
    FewShotSegmenter.from_pretrained("random", model_config=ModelConfig(encoder="tinynet_e"), size=64,
                                     device="cpu").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(tiny_init):
    from fewshotseg.app.serve import ServeOptions, serve
    from fewshotseg.app.workspace import Limits

    demo, url, close = serve(ServeOptions(inits=[str(tiny_init)], port=free_port(),
                                          limits=Limits(max_image_side=1000, max_images=4)), block=False)
    yield url, demo
    close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


def open_page(browser, url):
    context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT)
    page.goto(url, timeout=WAIT)
    page.wait_for_selector("#support-files input[type=file]", state="attached")
    return context, page


def wait_text(page, selector: str, text: str, timeout: int = WAIT) -> None:
    page.wait_for_function("([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)",
                           arg=[selector, text], timeout=timeout)


def upload(page, selector: str, files) -> None:
    page.locator(f"{selector} input[type=file]").set_input_files([str(f) for f in files])


def paint(page, editor: str = "#editor") -> None:
    """Brush strokes across the middle of the image, then an eraser stroke through them (mouse events)."""
    page.locator(f"{editor} button[aria-label='Brush']").first.click()
    box = page.locator(f"{editor} canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 50, cy - 40)
    page.mouse.down()
    for k in range(1, 5):  # a zigzag; each mouse event redraws the canvas (slow in software rendering)
        page.mouse.move(cx - 50 + 25 * k, cy - 40 + 80 * (k % 2), steps=2)
    page.mouse.up()
    page.locator(f"{editor} button[aria-label='Erase']").first.click()
    page.mouse.move(cx - 60, cy)
    page.mouse.down()
    page.mouse.move(cx + 60, cy, steps=2)
    page.mouse.up()


def pick(page, name: str, dropdown: str = "#pick") -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=name).click()


def download_zip(page) -> zipfile.ZipFile:
    with page.expect_download(timeout=WAIT) as download:
        page.locator("#download-zip").click()
    return zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))


def label_and_adapt(page, support, mask_file, queries) -> None:
    """Upload support images; paint the first one's mask, upload the second's; upload queries; Adapt."""
    upload(page, "#support-files", support)
    wait_text(page, "#pairs", f"of {len(support)} support image(s)")
    wait_for_image(page, "#editor")
    paint(page)
    page.locator("#use-painted").click()
    wait_text(page, "#pairs", "painted mask")
    pick(page, Path(support[1]).name)
    upload(page, "#mask-file", [mask_file])
    wait_text(page, "#pairs", "2 labelled pairs")
    upload(page, "#query-files", queries)
    wait_text(page, "#status", f"{len(queries)} query image(s) ready")
    page.locator("#steps input").fill(str(STEPS))


def png(z: zipfile.ZipFile, name: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(z.read(name))))


def test_page_masks_equal_fewshotseg_adapt(server, browser, tiny_init, tmp_path):
    from fewshotseg.cli import main

    url, _ = server
    context, page = open_page(browser, url)
    try:
        label_and_adapt(page, [DUCK / "1.jpg", DUCK / "2.jpg"], DUCK / "2.png", [DUCK / "3.jpg", CAT / "1.jpg"])
        page.locator("#adapt").click()
        page.wait_for_selector("#overlays img", timeout=ADAPT)
        wait_text(page, "#status", "segmented 2 query image(s)")
        z = download_zip(page)
    finally:
        context.close()
    assert sorted(z.namelist()) == ["masks/1_mask.png", "masks/3_mask.png", "settings.json", "support/1_mask.png",
                                    "support/2_mask.png"]
    painted = png(z, "support/1_mask.png") > 0
    assert 0.005 < painted.mean() < 0.5  # the brush's zigzag ...
    h, w = painted.shape  # ... cut in two by the eraser's stroke through the middle of the image
    assert painted[: h // 2 - 8].any() and painted[h // 2 + 8:].any() and not painted[h // 2 - 4: h // 2 + 4].any()
    from fewshotseg.data.images import read_mask

    np.testing.assert_array_equal(png(z, "support/2_mask.png") > 0, read_mask(DUCK / "2.png").astype(bool))

    # `fewshotseg adapt` on the same pairs (the painted mask from the zip), parameters and seed
    support, query, out = tmp_path / "support", tmp_path / "query", tmp_path / "out"
    support.mkdir()
    query.mkdir()
    for n in (1, 2):
        shutil.copy(DUCK / f"{n}.jpg", support / f"{n}.jpg")
        (support / f"{n}_mask.png").write_bytes(z.read(f"support/{n}_mask.png"))
    shutil.copy(DUCK / "3.jpg", query / "3.jpg")
    shutil.copy(CAT / "1.jpg", query / "1.jpg")
    code = main(["adapt", "--init", str(tiny_init), "--support", str(support), "--query", str(query), "--out",
                 str(out), "--u-lr", "0.005", "--u-steps", str(STEPS), "--seed", "0"])  # the card's regime, as the page
    assert code == 0
    for name in ("1", "3"):
        page_mask = png(z, f"masks/{name}_mask.png")
        assert page_mask.shape == np.asarray(Image.open(query / f"{name}.jpg")).shape[:2]
        np.testing.assert_array_equal(page_mask, np.asarray(Image.open(out / f"{name}_mask.png")))


def test_bad_input_is_shown_and_two_pages_adapt_concurrently(server, browser, tmp_path):
    url, demo = server
    before = set(demo.sessions.by_hash)
    (tmp_path / "notes.jpg").write_text("this is not a photo")
    a_context, a = open_page(browser, url)
    b_context, b = open_page(browser, url)
    try:
        upload(a, "#support-files", [tmp_path / "notes.jpg"])
        a.get_by_text("notes.jpg is not an image").first.wait_for(timeout=WAIT)
        a.locator("#segment").click()
        a.get_by_text("adapt first").first.wait_for(timeout=WAIT)
        a.locator("#add-to-support").click()
        a.get_by_text("no prediction to correct yet").first.wait_for(timeout=WAIT)
        upload(a, "#support-files", [DUCK / "1.jpg"])
        wait_text(a, "#pairs", "of 1 support image(s)")
        a.locator("#adapt").click()
        a.get_by_text("without a mask: 1.jpg").first.wait_for(timeout=WAIT)
        a.locator("#use-painted").click()  # nothing painted yet
        a.get_by_text("no foreground").first.wait_for(timeout=WAIT)
        a.locator("#remove").click()
        wait_text(a, "#pairs", "0 labelled pairs")

        # the server still serves: two pages with their own images adapt at once and each gets its own masks;
        # one adaptation runs at a time, so the page that clicks second is shown its place in the queue
        label_and_adapt(a, [DUCK / "1.jpg", DUCK / "2.jpg"], DUCK / "2.png", [DUCK / "3.jpg"])
        label_and_adapt(b, [CAT / "1.jpg", CAT / "2.jpg"], CAT / "2.png", [CAT / "3.jpg", DUCK / "3.jpg"])
        a.locator("#steps input").fill(str(LONG_STEPS))
        a.locator("#adapt").click()
        a.get_by_text("adapting").first.wait_for(timeout=WAIT)  # a's adaptation holds the only slot ...
        b.locator("#adapt").click()
        b.get_by_text("queue: 1/1").first.wait_for(timeout=WAIT)  # ... so b waits, first in line
        for page in (a, b):
            page.wait_for_selector("#overlays img", timeout=ADAPT)
        wait_text(a, "#status", "segmented 1 query image(s)")
        wait_text(b, "#status", "segmented 2 query image(s)")
        za, zb = download_zip(a), download_zip(b)
        folders = [ws.folder for key, ws in demo.sessions.by_hash.items() if key not in before]
        assert len(folders) == 2 and all(f.is_dir() for f in folders)  # one workspace per page
    finally:
        a_context.close()
        b_context.close()
    deadline = time.monotonic() + 30  # closing a tab ends its session (Gradio's unload): its folder goes
    while any(f.exists() for f in folders) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(f.exists() for f in folders)
    uploads = Path(os.environ["GRADIO_TEMP_DIR"])  # Gradio's copies of the uploads were deleted once read
    assert not [p for p in uploads.rglob("*") if p.name in {"notes.jpg", "1.jpg", "2.jpg", "3.jpg", "2.png"}]
    assert "masks/3_mask.png" in za.namelist() and "masks/3_2_mask.png" not in za.namelist()
    assert {"masks/3_mask.png", "masks/3_2_mask.png"} <= set(zb.namelist())  # two queries named 3.jpg: renamed
    from fewshotseg.data.images import read_mask

    np.testing.assert_array_equal(png(za, "support/2_mask.png") > 0, read_mask(DUCK / "2.png").astype(bool))
    np.testing.assert_array_equal(png(zb, "support/2_mask.png") > 0, read_mask(CAT / "2.png").astype(bool))


def canvas_shot(page, editor: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.locator(f"{editor} canvas").first.screenshot())).convert("RGB"))


def wait_for_image(page, editor: str, before: np.ndarray | None = None, timeout: float = WAIT / 1000) -> None:
    """Wait until the editor's canvas shows an image (its centre no longer the empty canvas' colour) -- with `before`
    (a canvas_shot taken before an upload), one that differs from it and has settled (two shots 300 ms apart nearly
    the same, or differing from `before` for 3 s) -- then 300 ms for the editor to set up its layer: strokes made
    while it is still loading or swapping its image are lost."""
    deadline = time.monotonic() + timeout
    last, since = None, None
    while time.monotonic() < deadline:
        shot = canvas_shot(page, editor)
        h, w = shot.shape[:2]
        shown = np.abs(shot[h // 2, w // 2].astype(int) - shot[2, 2]).max() > 30
        if shown and before is None:
            page.wait_for_timeout(300)
            return
        new = shown and (shot.shape != before.shape or changed(shot, before) > 0.002)
        if new:
            since = since or time.monotonic()
            if (last is not None and last.shape == shot.shape and changed(shot, last) < 0.01) or \
                    time.monotonic() - since > 3:
                page.wait_for_timeout(300)
                return
        last, since = (shot, since) if new else (None, None)
        page.wait_for_timeout(300)
    raise AssertionError(f"{editor} showed no {'new ' if before is not None else ''}image within {timeout:g} s")


def changed(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of pixels whose colour differs by more than 30 in some channel between two same-size shots."""
    return float((np.abs(a.astype(int) - b).max(axis=2) > 30).mean())


def stroke(page, editor: str, color: str, points) -> None:
    """One brush stroke in `color` (a swatch's CSS rgb) through `points`, offsets in px from the canvas' centre."""
    page.locator(f"{editor} button[aria-label='Brush']").first.click()
    page.locator(f"{editor} button[aria-label='Color']").first.click()
    page.locator(f"{editor} button[style*='{color}']").last.click()
    box = page.locator(f"{editor} canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    (x0, y0), *rest = points
    page.mouse.move(cx + x0, cy + y0)
    page.mouse.down()
    for x, y in rest:
        page.mouse.move(cx + x, cy + y, steps=2)
    page.mouse.up()


@pytest.mark.slow
def test_correct_a_prediction_add_it_to_support_and_adapt_again(server, browser):
    url, _ = server
    context, page = open_page(browser, url)
    try:
        label_and_adapt(page, [DUCK / "1.jpg", DUCK / "2.jpg"], DUCK / "2.png", [DUCK / "3.jpg", CAT / "1.jpg"])
        for control, value in (("#lr", CORRECT_LR), ("#steps", CORRECT_STEPS)):
            page.locator(f"{control} input").fill(str(value))
        page.locator("#adapt").click()
        wait_text(page, "#status", "segmented 2 query image(s)", timeout=ADAPT)
        before = download_zip(page)
        pick(page, "3.jpg", "#correct-pick")  # the prediction opens in the correction editor ...
        wait_for_image(page, "#correct-editor")
        paint(page, "#correct-editor")  # ... red strokes add to it (the eraser takes some back) ...
        stroke(page, "#correct-editor", "rgb(0, 0, 255)", [(0, -90), (0, 90)])  # ... a blue one removes
        page.locator("#add-to-support").click()  # ... and it joins the support set
        wait_text(page, "#corrections", "1 corrected")
        wait_text(page, "#pairs", "3 labelled pairs")
        wait_text(page, "#pairs", "3.jpg: corrected prediction")
        counter = page.locator("#corrections").inner_text()
        for control, value in (("#lr", CORRECT_LR), ("#steps", CORRECT_STEPS)):  # (refreshed for 3 pairs)
            page.locator(f"{control} input").fill(str(value))
        page.locator("#adapt").click()
        wait_text(page, "#status", "to 3 pair(s)", timeout=ADAPT)
        wait_text(page, "#status", "segmented 1 query image(s)")
        after = download_zip(page)
    finally:
        context.close()
    assert sorted(after.namelist()) == ["masks/1_mask.png", "settings.json", "support/1_mask.png",
                                        "support/2_mask.png", "support/3_mask.png"]  # 3.jpg is no longer a query
    assert json.loads(after.read("settings.json"))["support"] == ["1.jpg", "2.jpg", "3.jpg"]
    predicted, corrected = png(before, "masks/3_mask.png") > 0, png(after, "support/3_mask.png") > 0
    h, w = corrected.shape
    assert predicted[:, w // 2].any()  # (the blue stroke runs down the middle column, through the prediction)
    assert (corrected & ~predicted).any() and (predicted & ~corrected).any()  # pixels added and removed ...
    assert not (corrected & ~predicted)[h // 2 - 3: h // 2 + 3, w // 2 - 40: w // 2 + 40].any()  # (erased strokes)
    outside = np.ones_like(corrected)  # ... and away from the strokes, the prediction
    outside[h // 2 - 100: h // 2 + 100, w // 2 - 100: w // 2 + 100] = False
    np.testing.assert_array_equal(corrected[outside], predicted[outside])
    assert f"1 corrected: {100 * np.mean(corrected != predicted):.1f} % of pixels changed" in counter
    assert not np.array_equal(png(after, "masks/1_mask.png"), png(before, "masks/1_mask.png"))  # the new masks


@pytest.mark.slow
def test_two_objects_painted_adapted_and_equal_to_the_api(server, browser, tiny_init):
    from fewshotseg.multiclass import MultiClassSegmenter

    url, _ = server
    context, page = open_page(browser, url)
    try:
        page.locator("#objects textarea").fill("duck, cat")
        page.locator("#set-objects").click()
        page.wait_for_selector("#paint-class", state="visible")
        pick(page, "cat", "#paint-class")  # each image is uploaded, then painted at once (its editor fresh)
        upload(page, "#support-files", [CAT / "2.jpg"])
        wait_text(page, "#pairs", "of 1 support image(s)")
        wait_for_image(page, "#editor")
        paint(page)
        page.locator("#use-painted").click()
        wait_text(page, "#pairs", "2.jpg: painted mask (cat)")
        painted = canvas_shot(page, "#editor")
        pick(page, "duck", "#paint-class")
        page.wait_for_timeout(1000)  # its editor update (the cat, without the cat's strokes) must land before the upload's
        with contextlib.suppress(AssertionError):  # ... seen as a change of the canvas, which may be slight
            wait_for_image(page, "#editor", painted, timeout=5)
        before = canvas_shot(page, "#editor")  # ... before the upload, whose duck must replace it
        upload(page, "#support-files", [DUCK / "1.jpg"])
        wait_text(page, "#pairs", "of 2 support image(s)")
        wait_for_image(page, "#editor", before)
        paint(page)
        page.locator("#use-painted").click()
        wait_text(page, "#pairs", "1.jpg: painted mask (duck)")
        wait_text(page, "#pairs", "2 labelled pairs")
        upload(page, "#query-files", [DUCK / "3.jpg", CAT / "3.jpg"])
        wait_text(page, "#status", "2 query image(s) ready")
        pick(page, "prototype (cosine)", "#method")
        page.locator("#adapt").click()
        wait_text(page, "#status", "segmented 2 query image(s)", timeout=ADAPT)
        wait_text(page, "#status", "2 objects (duck, cat")
        wait_text(page, "#legend", "Contested pixels")
        legend = page.locator("#legend").inner_text()
        assert "Adapted segmenter (zip)" in page.locator("#download-weights").inner_text()
        z = download_zip(page)
    finally:
        context.close()
    assert "duck" in legend and "cat" in legend
    assert {"masks/3_mask.png", "masks/3_2_mask.png", "masks/3_duck_mask.png", "masks/3_2_cat_mask.png",
            "masks/classes.txt", "support/1_mask.png", "support/2_mask.png"} <= set(z.namelist())
    duck, cat = png(z, "support/1_mask.png"), png(z, "support/2_mask.png")  # indexed: 1 duck, 2 cat
    assert set(np.unique(duck)) == {0, 1} and set(np.unique(cat)) == {0, 2}

    api = MultiClassSegmenter.from_pretrained(tiny_init, device="cpu")
    api.fit([CAT / "2.jpg", DUCK / "1.jpg"], {"duck": [None, duck == 1], "cat": [cat == 2, None]},
            method="prototype", seed=0)  # the page's order
    contested = json.loads(z.read("settings.json"))["contested_pixels"]
    for stem, pred in zip(("3", "3_2"), api.predict([DUCK / "3.jpg", CAT / "3.jpg"]), strict=True):
        np.testing.assert_array_equal(png(z, f"masks/{stem}_mask.png"), pred.labels)
        for name in ("duck", "cat"):
            np.testing.assert_array_equal(png(z, f"masks/{stem}_{name}_mask.png") > 0, pred.masks[name])
        assert contested[f"{stem}.jpg"] == pred.contested and f"{stem}.jpg {pred.contested}" in legend
