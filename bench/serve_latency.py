"""`fewshotseg serve`: seconds from clicking Adapt to the first overlay in the page, and peak memory.

A real `fewshotseg serve` process on 127.0.0.1 and Debian's chromium driven headless by Playwright: upload 5 support
pairs (masks uploaded) and one query, then, for each round, click Adapt and time until the first overlay image is in
the gallery. Memory: the server process's peak resident set (VmHWM) and the page's peak JavaScript heap (Chrome's
`Performance.getMetrics`, sampled during the whole run).

    python bench/serve_latency.py [--init general] [--rounds 3] [--threads 1]

The initialization defaults to the shipped `general` one, at its own size and with its card's update parameters.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "fixtures" / "real-photos"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", default="general")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for one adaptation")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    init = args.init
    pairs = []  # 5 (image, mask) pairs with distinct names: cat1.jpg + cat1.png, ...
    for mask in sorted(PHOTOS.glob("*/[0-9].png"))[:5]:
        name = f"{mask.parent.name}{mask.stem}"
        shutil.copy(mask.with_suffix(".jpg"), tmp / f"{name}.jpg")
        shutil.copy(mask, tmp / f"{name}.png")
        pairs.append((tmp / f"{name}.jpg", tmp / f"{name}.png"))
    query = PHOTOS / "cat" / "3.jpg"
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "fewshotseg", "serve", "--init", init, "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"the server did not start: {server.stderr.read() if server.stderr else ''}") from None
                time.sleep(0.5)
        times, heap = [], [0.0]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(30_000)
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            page.goto(url)
            server_start = vm_mb(server.pid, "VmRSS")

            def heap_mb() -> float:
                metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
                return metrics.get("JSHeapUsedSize", 0) / 2**20

            page.locator("#support-files input[type=file]").set_input_files([str(im) for im, _ in pairs])
            page.wait_for_function("document.querySelector('#pairs').innerText.includes('of 5 support')")
            heap[0] = max(heap[0], heap_mb())
            for im, m in pairs:
                name = im.name
                page.locator("#pick input").click()
                page.get_by_role("option", name=name, exact=True).click()
                page.locator("#mask-file input[type=file]").set_input_files(str(m))
                page.wait_for_function(f"document.querySelector('#pairs').innerText.includes('{name}: uploaded')")
                heap[0] = max(heap[0], heap_mb())
            page.locator("#query-files input[type=file]").set_input_files(str(query))
            page.wait_for_function("document.querySelector('#status').innerText.includes('1 query image')")
            steps = page.locator("#steps input").input_value()
            lr = page.locator("#lr input").input_value()
            for r in range(args.rounds):
                page.locator("#seed input").fill(str(r))
                start = time.perf_counter()
                page.locator("#adapt").click()
                # the status names the seed of the finished adaptation: wait for this round's overlay
                page.wait_for_function(f"document.querySelector('#status').innerText.includes('seed {r};') && "
                                       "document.querySelector('#overlays img')", timeout=args.timeout * 1000)
                times.append(time.perf_counter() - start)
                heap[0] = max(heap[0], heap_mb())
            status = page.locator("#status").inner_text().split(";")[0]  # what Adapt did: the method, or U's lr
            browser.close()
        server_peak = vm_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"init: {init}; the page's lr {lr}, {steps} steps (used when the method fine-tunes); 5 support pairs, 1 "
          f"query; torch threads {args.threads}; {os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f}")
    print(f"status: {status}")
    print("Adapt -> first overlay, s: " + ", ".join(f"{t:.2f}" for t in times)
          + f" (median {statistics.median(times):.2f}; goal <= 20)")
    print(f"memory: server process {server_start:.0f} MB when the page opened, peak {server_peak:.0f} MB (VmHWM); "
          f"page JS heap peak {heap[0]:.1f} MB")


if __name__ == "__main__":
    main()
