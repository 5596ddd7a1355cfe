"""Initializations on real photographs, side by side in one run: mean IoU +- CI95 of what `adapt` gives a user.

    python bench/real_photos.py --corpus CORPUS_DIR \
        --init general=general \
        --init imagenet=imagenet:runs/imagenet-uho-{k}shot/update_params.json \
        --init random=random:runs/random-uho-{k}shot/update_params.json

Each `--init LABEL=SPEC[:UPDATE_PARAMS]` is an initialization (`general`, a folder, `imagenet`, `random`) and,
optionally, the `tune` result to adapt it with (`{k}` becomes the shot count); without one, the initialization's own
card decides (the general initialization's card holds its UHO results). Every initialization is adapted through
`FewShotSegmenter` exactly as `adapt` does it (support BatchNorm statistics, seed 0) at the same size (--size, or the
first initialization's card).

Two test sets, neither used for training or tuning:
* the corpus's held-out real-photo classes (its `test` split): the paper's protocol, k in {1, 5} support images and
  5 query images per split, 2 seeded splits per class; the mean over splits of the per-split mean IoU +- 1.96 s/sqrt(n);
* the real-photo fixtures (tests/fixtures/real-photos): leave-one-out per class, every other image of the class as
  support (2-3 images); mean IoU +- CI95 over the cases.
Then `adapt`'s latency for 5 support pairs + 20 queries (the `fewshotseg adapt` command, timed end to end, including
start-up), and the size of each initialization's weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "real-photos"


def iou(pred: np.ndarray, mask: np.ndarray) -> float:
    union = (pred | mask).sum()
    return float((pred & mask).sum() / union) if union else 1.0


def ci95(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(1.96 * a.std() / np.sqrt(len(a)))


def segmenter(spec: str, size: int):
    from fewshotseg.models.efficientlab import ModelConfig
    from fewshotseg.segmenter import FewShotSegmenter

    return FewShotSegmenter.from_pretrained(spec, device="cpu", size=size,
                                            model_config=ModelConfig(encoder="tf_efficientnet_lite0"))


def adapt_and_score(seg, support: list[Path], queries: list[Path], params_file: str | None, seed: int) -> list[float]:
    from fewshotseg.data.images import read_mask

    params, _ = seg.update_params_for(len(support), file=params_file)
    seg.fit(support, [p.with_suffix(".png") for p in support], seed=seed, update_params=params)
    preds = seg.predict(queries)
    return [iou(p.mask, read_mask(q.with_suffix(".png")).astype(bool)) for p, q in zip(preds, queries, strict=True)]


def corpus_protocol(seg, corpus: Path, shots: int, params_file: str | None, splits: int = 2) -> tuple[float, float, int]:
    test = json.loads((corpus / "splits.json").read_text())["test"]
    split_means = []
    for ci, name in enumerate(sorted(test)):
        files = sorted((corpus / name).glob("*.jpg"), key=lambda p: int(p.stem))
        for s in range(splits):
            order = np.random.default_rng([0, ci, s, shots]).permutation(len(files))
            support = [files[i] for i in order[:shots]]
            queries = [files[i] for i in order[shots: shots + 5]]
            split_means.append(float(np.mean(adapt_and_score(seg, support, queries, params_file, seed=s))))
    return (*ci95(split_means), len(split_means))


def fixtures_loo(seg, params_file_for) -> tuple[float, float, int]:
    scores = []
    for folder in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        images = sorted(folder.glob("*.jpg"))
        for held in images:
            support = [p for p in images if p != held]
            scores += adapt_and_score(seg, support, [held], params_file_for(len(support)), seed=0)
    return (*ci95(scores), len(scores))


def adapt_latency(spec: str, params_file: str | None, size: int) -> float:
    """Seconds for `fewshotseg adapt` with 5 support pairs and 20 queries, start-up included."""
    with tempfile.TemporaryDirectory() as tmp:
        support, query = Path(tmp) / "s", Path(tmp) / "q"
        support.mkdir(), query.mkdir()
        pairs = [(f, f.with_suffix(".png")) for f in sorted(FIXTURES.glob("*/*.jpg"))]
        for n, (image, mask) in enumerate(pairs[:5]):
            shutil.copy(image, support / f"{n}.jpg")
            shutil.copy(mask, support / f"{n}.png")
        for n in range(20):
            shutil.copy(pairs[n % len(pairs)][0], query / f"q{n}.jpg")
        cmd = [sys.executable, "-m", "fewshotseg", "adapt", "--init", spec, "--support", str(support),
               "--query", str(query), "--out", str(Path(tmp) / "o"), "--device", "cpu"]
        if spec in ("imagenet", "random"):
            cmd += ["--encoder", "tf_efficientnet_lite0", "--size", str(size)]
        if params_file:
            cmd += ["--update-params", params_file]
        started = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        return time.perf_counter() - started


def params_file_for(pattern: str | None):
    """shots -> the tune result to use: `pattern` with {k} replaced by the nearest tuned shot count (1 or 5)."""

    def file_for(shots: int) -> str | None:
        return pattern.replace("{k}", str(min((1, 5), key=lambda s: abs(s - shots)))) if pattern else None

    return file_for


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="a make-corpus folder (its test split: real photographs)")
    parser.add_argument("--init", action="append", required=True, help="LABEL=SPEC[:UPDATE_PARAMS with {k}]")
    parser.add_argument("--size", type=int, default=0, help="input size (0: the first initialization's card)")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--out", default="", help="also write the numbers to this JSON file (after each row)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    inits = []
    for item in args.init:
        label, _, rest = item.partition("=")
        spec, _, params = rest.partition(":")
        inits.append((label, spec, params or None))
    size = args.size or segmenter(inits[0][1], 0).size
    print(f"real photographs at {size} px; corpus {args.corpus}; U per initialization as given (or its card)")
    rows = {}
    for label, spec, params in inits:
        seg = segmenter(spec, size)
        file_for = params_file_for(params)
        row = {"spec": spec}
        for k in args.shots:
            mean, half, n = corpus_protocol(seg, Path(args.corpus), k, file_for(k))
            row[f"corpus_{k}shot"] = {"mean": mean, "ci95": half, "splits": n}
            print(f"  {label:10s} corpus test classes, {k}-shot: {100 * mean:5.1f} ± {100 * half:4.1f} % ({n} splits)",
                  flush=True)
        mean, half, n = fixtures_loo(seg, file_for)
        row["fixtures_loo"] = {"mean": mean, "ci95": half, "cases": n}
        print(f"  {label:10s} fixtures leave-one-out: {100 * mean:5.1f} ± {100 * half:4.1f} % ({n} cases)", flush=True)
        row["adapt_seconds_5_support_20_queries"] = adapt_latency(spec, file_for(5), size)
        weights = None
        if spec not in ("imagenet", "random"):
            from fewshotseg.runs.initialization import find_initialization

            weights = find_initialization(spec).stat().st_size
        row["weights_bytes"] = weights
        print(f"  {label:10s} adapt (5 support + 20 queries): {row['adapt_seconds_5_support_20_queries']:.1f} s; "
              f"weights {weights / 1e6:.1f} MB" if weights else
              f"  {label:10s} adapt (5 support + 20 queries): {row['adapt_seconds_5_support_20_queries']:.1f} s",
              flush=True)
        rows[label] = row
        if args.out:  # after every row, so that the rows measured so far survive an interrupted run
            Path(args.out).write_text(json.dumps({"size": size, "rows": rows}, indent=2) + "\n")
    print()
    print("| initialization | corpus real-photo classes, 1-shot | 5-shot | fixtures, leave-one-out | adapt 5+20 |")
    print("|---|---:|---:|---:|---:|")
    for label, row in rows.items():
        cells = [f"{100 * row[f'corpus_{k}shot']['mean']:.1f} ± {100 * row[f'corpus_{k}shot']['ci95']:.1f} %"
                 for k in args.shots]
        fx = row["fixtures_loo"]
        print(f"| {label} | {' | '.join(cells)} | {100 * fx['mean']:.1f} ± {100 * fx['ci95']:.1f} % | "
              f"{row['adapt_seconds_5_support_20_queries']:.1f} s |")


if __name__ == "__main__":
    main()
