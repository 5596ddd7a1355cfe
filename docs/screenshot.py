"""Take docs/serve.png: the `fewshotseg serve` page after labelling (one mask painted with the brush, two uploaded)
and adapting to rubber-duck photos, as a headless chromium shows it.

    python docs/screenshot.py [--init general] [--steps 20]

Uses the shipped `general` initialization unless `--init` names another."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DUCK = REPO / "tests" / "fixtures" / "real-photos" / "duck_toy"
WAIT = 30_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", default="general")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=str(REPO / "docs" / "serve.png"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="serve-shot-"))
    init = args.init
    for n in (1, 2, 3):
        shutil.copy(DUCK / f"{n}.jpg", tmp / f"duck{n}.jpg")
    shutil.copy(DUCK / "2.png", tmp / "duck2_mask.png")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "fewshotseg", "serve", "--init", init, "--port", str(port)],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT)
            page.goto(url)
            page.locator("#support-files input[type=file]").set_input_files([str(tmp / "duck1.jpg"),
                                                                             str(tmp / "duck2.jpg")])
            page.wait_for_function("document.querySelector('#pairs').innerText.includes('of 2 support')")
            page.locator("#pick input").click()
            page.get_by_role("option", name="duck2.jpg").click()
            page.locator("#mask-file input[type=file]").set_input_files(str(tmp / "duck2_mask.png"))
            page.wait_for_function("document.querySelector('#pairs').innerText.includes('uploaded')")
            page.locator("#pick input").click()
            page.get_by_role("option", name="duck1.jpg").click()
            page.wait_for_timeout(1000)
            paint_duck(page)
            page.locator("#use-painted").click()
            page.wait_for_function("document.querySelector('#pairs').innerText.includes('painted')")
            page.locator("#query-files input[type=file]").set_input_files(str(tmp / "duck3.jpg"))
            page.wait_for_function("document.querySelector('#status').innerText.includes('1 query')")
            page.locator("#steps input").fill(str(args.steps))
            page.locator("#adapt").click()
            page.wait_for_function("document.querySelector('#status').innerText.includes('segmented')",
                                   timeout=300_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out}")


def paint_duck(page) -> None:
    """Brush strokes over the duck of duck_toy/1.jpg (its body sits right of the image's centre)."""
    page.locator("#editor button[aria-label='Brush']").first.click()
    box = page.locator("#editor canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    strokes = [(-30, 20, dy) for dy in range(-85, -35, 10)] + [(-45, 75, dy) for dy in range(-35, 75, 10)]
    for x0, x1, dy in strokes:  # (left, right, height) of each stroke, from the canvas centre
        page.mouse.move(cx + x0, cy + dy)
        page.mouse.down()
        page.mouse.move(cx + x1, cy + dy, steps=6)
        page.mouse.up()


if __name__ == "__main__":
    main()
