"""What folding BatchNorm into the convolutions buys the frozen-feature methods, and what it changes.

    python bench/fold_batchnorm.py [--init general] [--rounds 5] [--queries 20] [--threads 1]

The initialization (by default the shipped `general`) is fitted, as `adapt` fits it, to the first 5 real-photo fixture
pairs; then, alternating round by round in one process: its frozen network's features of the queries (fixture photos)
with the network as it is and with its BatchNorm-folded copy (`fewshotseg.models.folding.fold_batchnorm`, what the
probe and the prototype read), and the whole `predict` of the queries with each. Prints the best and median seconds of
each, their ratio, the largest difference between the two feature maps (relative to the largest feature) and between
the two probability maps, and how many mask pixels differ.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "fixtures" / "real-photos"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default="general")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from fewshotseg.models.closed_form import pixel_features
    from fewshotseg.segmenter import FewShotSegmenter, _resize_image, load_image

    pairs = [(f, f.with_suffix(".png")) for f in sorted(PHOTOS.glob("*/*.jpg"))]
    queries = [pairs[n % len(pairs)][0] for n in range(args.queries)]
    seg = FewShotSegmenter.from_pretrained(args.init, device="cpu")
    seg.fit([p for p, _ in pairs[:5]], [m for _, m in pairs[:5]])
    adapter = seg._adapter
    if adapter is None or not hasattr(adapter, "_folded"):
        raise SystemExit(f"{args.init}: its method ({seg.method.method if seg.method else None}) does not read frozen features; nothing is folded")
    seg.predict(queries[:2])  # (the folded copy is made on the first features read)
    network, folded = adapter._folded
    images = torch.from_numpy(np.stack([_resize_image(load_image(q, q.name), seg.size) for q in queries]))
    images = images.permute(0, 3, 1, 2).float().div_(255)  # the queries as `predict` gives them to the method
    names = tuple(adapter.settings.features)

    timings: dict[str, list[float]] = {k: [] for k in ("features", "features folded", "predict", "predict folded")}
    outputs = {}
    for _ in range(args.rounds):
        for label, net in (("", network), (" folded", folded)):
            with torch.no_grad():
                t0 = time.perf_counter()
                outputs["features" + label] = pixel_features(net, images, names)
                timings["features" + label].append(time.perf_counter() - t0)
            adapter._folded = (network, net)
            t0 = time.perf_counter()
            outputs["predict" + label] = seg.predict(queries)
            timings["predict" + label].append(time.perf_counter() - t0)
    adapter._folded = (network, folded)

    print(f"{args.init}: {seg.described}; {len(queries)} queries, {args.rounds} rounds, "
          f"{torch.get_num_threads()} torch thread(s)")
    for what in ("features", "predict"):
        plain, fold = timings[what], timings[what + " folded"]
        print(f"  {what:<8}  as it is {min(plain):.3f} s best, {statistics.median(plain):.3f} median; folded "
              f"{min(fold):.3f} best, {statistics.median(fold):.3f} median: "
              f"{statistics.median(plain) / statistics.median(fold):.2f}x")
    a, b = outputs["features"], outputs["features folded"]
    print(f"  features: largest difference {float((a - b).abs().max() / a.abs().max()):.1e} of the largest feature")
    p, q = outputs["predict"], outputs["predict folded"]
    prob = max(float(abs(x.probability - y.probability).max()) for x, y in zip(p, q, strict=True))
    flips = sum(int((x.mask != y.mask).sum()) for x, y in zip(p, q, strict=True))
    total = sum(x.mask.size for x in p)
    print(f"  predict: largest probability difference {prob:.1e}; {flips} of {total} mask pixels differ")


if __name__ == "__main__":
    main()
