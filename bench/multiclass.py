"""Several objects at once: one-vs-rest (a probe per class) against one joint softmax head, on the same episodes.

    python bench/multiclass.py --corpus CORPUS_DIR [--shots 1 5] [--draws 2] [--pairs 0] [--init general] [--out F]

Episodes, from the corpus's real-photo VALIDATION classes only (where decisions are taken; the test classes are
never read): for every pair of two different classes A and B (all 21 pairs of the 7 classes, or the first --pairs
of them in a seeded order), every shot count k and --draws seeded draws of k + 5 images of each class; image i of A and
image i of B side by side form one mosaic (each half at the corpus's own size, which half is A drawn at random), its
label map 1 where A's mask is, 2 where B's is. The first k mosaics are the support set, the other 5 the queries:
every image holds two labelled objects, plus the corpus's distractor objects (background).

Both strategies run through `MultiClassSegmenter` on the initialization's own method (the probe of `general`), one
torch thread, alternately on each episode. Scores: a class's IoU on each query (predicted label k against the
true label k, at the mosaic's size), averaged over an episode's 5 queries; the mean over (episode, class) with a
class-bootstrap CI95 (the 7 classes resampled), and the same for the paired difference joint - one-vs-rest.
Seconds: fit + predicting the 5 queries, per episode. `contested`: the share of query pixels that two classes
claimed (one-vs-rest only; the joint head's shared softmax cannot exceed 0.5 twice).

The rule, fixed before running: the strategy with the higher mean IoU over both shot counts becomes the default;
when the CI95 of the paired difference holds 0, the faster one does.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

STRATEGIES = ("one-vs-rest", "joint")


def mosaic(left: Path, right: Path) -> tuple[np.ndarray, np.ndarray]:
    """(H, W1 + W2, 3) uint8 image and (H, W1 + W2) uint8 labels 1 (left) / 2 (right) of two corpus pairs."""
    from fewshotseg.data.images import read_image, read_mask

    images = [read_image(p) for p in (left, right)]
    masks = [read_mask(p.with_suffix(".png")).astype(np.uint8) * (k + 1) for k, p in enumerate((left, right))]
    h = min(x.shape[0] for x in images)
    return np.concatenate([x[:h] for x in images], 1), np.concatenate([m[:h] for m in masks], 1)


def episode(corpus: Path, a: str, b: str, shots: int, key: list[int]) -> tuple[list, list, list, list]:
    """(support images, support label maps, query images, query label maps); label 1 = class a, 2 = class b."""
    rng = np.random.default_rng(key)
    files = {c: sorted((corpus / c).glob("*.jpg"), key=lambda p: int(p.stem)) for c in (a, b)}
    picks = {c: rng.permutation(len(files[c]))[: shots + 5] for c in (a, b)}
    images, labels = [], []
    for i in range(shots + 5):
        fa, fb = files[a][picks[a][i]], files[b][picks[b][i]]
        if rng.random() < 0.5:
            image, label = mosaic(fa, fb)
        else:  # b on the left: its label is still 2
            image, swapped = mosaic(fb, fa)
            label = np.where(swapped == 1, 2, np.where(swapped == 2, 1, 0)).astype(np.uint8)
        images.append(image)
        labels.append(label)
    return images[:shots], labels[:shots], images[shots:], labels[shots:]


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = (pred | truth).sum()
    return float((pred & truth).sum() / union) if union else 1.0


def run(seg, strategy: str, support: tuple[list, list], queries: tuple[list, list], classes: list[str]) -> dict:
    started = time.perf_counter()
    seg.fit(support[0], support[1], classes=classes, strategy=strategy, seed=0)
    preds = seg.predict(queries[0])
    seconds = time.perf_counter() - started
    scores = [float(np.mean([iou(p.labels == k, t == k) for p, t in zip(preds, queries[1], strict=True)]))
              for k in (1, 2)]
    pixels = sum(p.labels.size for p in preds)
    return {"iou": scores, "seconds": seconds, "contested": sum(p.contested for p in preds) / pixels}


def cell(est) -> str:
    return f"{100 * est.mean:.1f} [{100 * est.low:.1f}, {100 * est.high:.1f}]"


def main() -> None:
    import torch

    from fewshotseg.data.corpus.build import photo_classes
    from fewshotseg.evaluation.intervals import class_bootstrap
    from fewshotseg.multiclass import MultiClassSegmenter

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="a make-corpus folder (version 2: real-photo val classes)")
    parser.add_argument("--init", default="general", help="the initialization (its own method: the probe)")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--pairs", type=int, default=0, help="class pairs per shot count (0: all)")
    parser.add_argument("--draws", type=int, default=2, help="episodes per class pair and shot count")
    parser.add_argument("--out", default="", help="also write every episode's numbers to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    corpus = Path(args.corpus)
    classes = photo_classes(corpus, "val")
    pairs = list(itertools.combinations(classes, 2))
    if args.pairs:
        order = np.random.default_rng(0).permutation(len(pairs))
        pairs = [pairs[i] for i in sorted(order[: args.pairs])]
    seg = MultiClassSegmenter.from_pretrained(args.init, device="cpu")
    print(f"{len(classes)} real-photo val classes of {corpus}: {', '.join(classes)}; {len(pairs)} class pairs x "
          f"shots {args.shots} x {args.draws} draws; {args.init} at {seg.size} px, {seg.base.method_for('card')[0].describe()}", flush=True)

    rows: list[dict] = []
    for shots in args.shots:
        for (a, b), draw in itertools.product(pairs, range(args.draws)):
            key = [0, classes.index(a), classes.index(b), shots, draw]
            s_images, s_labels, q_images, q_labels = episode(corpus, a, b, shots, key)
            row = {"shots": shots, "classes": [a, b]}
            for strategy in STRATEGIES:
                row[strategy] = run(seg, strategy, (s_images, s_labels), (q_images, q_labels), [a, b])
            rows.append(row)
            print(f"  {shots}-shot {a} + {b}: " + "; ".join(
                f"{s} {100 * np.mean(row[s]['iou']):.1f} % in {row[s]['seconds']:.2f} s" for s in STRATEGIES),
                flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps({"classes": classes, "rows": rows}, indent=1) + "\n")

    def scores(strategy: str, subset: list[dict]) -> tuple[list[float], list[str]]:
        values = [v for r in subset for v in r[strategy]["iou"]]
        owners = [c for r in subset for c in r["classes"]]
        return values, owners

    print("\n| shots | episodes | one-vs-rest mIoU % [CI95] | joint mIoU % [CI95] | joint - one-vs-rest [CI95] | "
          "s/episode one-vs-rest | s/episode joint | contested (one-vs-rest) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    groups = [(str(k), [r for r in rows if r["shots"] == k]) for k in args.shots] + [("all", rows)]
    summary = {}
    for label, subset in groups:
        ovr, owners = scores("one-vs-rest", subset)
        joint, _ = scores("joint", subset)
        est = {s: class_bootstrap(scores(s, subset)[0], owners) for s in STRATEGIES}
        diff = class_bootstrap(np.subtract(joint, ovr).tolist(), owners)
        secs = {s: float(np.mean([r[s]["seconds"] for r in subset])) for s in STRATEGIES}
        contested = float(np.mean([r["one-vs-rest"]["contested"] for r in subset]))
        summary[label] = {"diff": diff, "est": est, "seconds": secs}
        print(f"| {label} | {len(subset)} | {cell(est['one-vs-rest'])} | {cell(est['joint'])} | "
              f"{100 * diff.mean:+.1f} [{100 * diff.low:+.1f}, {100 * diff.high:+.1f}] | {secs['one-vs-rest']:.2f} | "
              f"{secs['joint']:.2f} | {100 * contested:.2f} % |")
    overall = summary["all"]
    if overall["diff"].low <= 0 <= overall["diff"].high:
        choice = min(STRATEGIES, key=lambda s: overall["seconds"][s])
        why = "no measurable difference in IoU (the CI95 of the difference holds 0): the faster one"
    else:
        choice = "joint" if overall["diff"].mean > 0 else "one-vs-rest"
        why = "the higher mean IoU"
    print(f"\ndefault strategy: {choice} ({why})")


if __name__ == "__main__":
    main()
