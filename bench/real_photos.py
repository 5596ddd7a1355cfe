"""Adaptation methods x initializations on real photographs, side by side in one run: what `adapt` gives a user.

    python bench/real_photos.py --corpus CORPUS_DIR --split val \
        --row "general U=init=general" \
        --row "general probe=init=general,method=probe" \
        --row "ImageNet probe=init=imagenet,method=probe" \
        --row "ImageNet U=init=imagenet,method=finetune,params=tune/imagenet-{k}shot/update_params.json"

Each `--row "LABEL=KEY=VALUE,..."` is one method on one initialization:
  init      general, a folder with card.json, imagenet or random (lite0 encoder)
  method    card (the initialization's own; default), finetune, probe, prototype or rf
  settings  the method's settings: a file (`tune --method`'s method.json) or inline `k:v;k:v` (lists with `+`)
  params    U's hyperparameters for finetune: a `tune` result, `{k}` becoming the nearest tuned shot count (1 or 5)
  bn        U's BatchNorm regime for finetune (paper, transductive, frozen, support); default: U's own
  encoder   the encoder of `imagenet` and `random` (default tf_efficientnet_lite0; lite1 and lite2 with the lite extra)
Every row is adapted through `FewShotSegmenter` exactly as `adapt` adapts it (seed 0, the card's method and regime
unless the row says otherwise) at the same size (--size, or the first row's card), on exactly the same episodes.

Episodes, neither used for training: the corpus's real-photo classes of `--split` (`val`: the real-photo validation
classes, where decisions are taken; `test`: the held-out ones, looked at once), the paper's protocol (k in --shots
support images and 5 query images, 2 seeded splits per class); the mean over splits of the per-split mean IoU, with a
class-bootstrap CI95 (the two splits of a class share it). `--fixtures`: also the 14 leave-one-out cases of
tests/fixtures/real-photos (every other image of the class as support: 2 or 4 shots), with a class-bootstrap CI.
Seconds per episode (adapt + predict 5 queries, one thread) are measured in the same run; `--latency` also times the
`fewshotseg adapt` command end to end with 5 support pairs + 20 queries, start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
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


def parse_row(text: str) -> tuple[str, dict[str, str]]:
    label, _, rest = text.partition("=")
    fields = dict(item.split("=", 1) for item in rest.split(",") if item)
    unknown = set(fields) - {"init", "method", "settings", "params", "bn", "encoder"}
    if not label or "init" not in fields or unknown:
        raise SystemExit(f"--row {text!r}: write LABEL=init=...,method=...,settings=...,params=...,bn=... "
                         f"(unknown keys: {sorted(unknown)})")
    return label, fields


def inline_settings(text: str) -> dict:
    """`features:skip+deep;l2:0.01` -> {"features": ["skip", "deep"], "l2": 0.01}."""
    out: dict = {}
    for item in filter(None, text.split(";")):
        key, _, value = item.partition(":")
        if "+" in value or key == "features":
            out[key] = value.split("+")
        else:
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
    return out


class Row:
    """One method on one initialization, adapting through `FewShotSegmenter` as `adapt` does."""

    def __init__(self, label: str, fields: dict[str, str], size: int):
        from fewshotseg.models.efficientlab import ModelConfig
        from fewshotseg.segmenter import FewShotSegmenter

        self.label, self.fields = label, fields
        self.seg = FewShotSegmenter.from_pretrained(fields["init"], device="cpu", size=size,
                                                    model_config=ModelConfig(encoder=fields.get("encoder", "tf_efficientnet_lite0")))
        settings = fields.get("settings", "")
        file = settings if settings and Path(settings).is_file() else None
        self.spec, self.source = self.seg.method_for(fields.get("method", "card"), file=file,
                                                     settings=None if file else inline_settings(settings))

    def params(self, shots: int):
        if self.spec.method != "finetune":
            return None
        pattern = self.fields.get("params")
        file = pattern.replace("{k}", str(min((1, 5), key=lambda s: abs(s - shots)))) if pattern else None
        params, _ = self.seg.update_params_for(shots, file=file)
        return params.replace(bn_policy=self.fields["bn"]) if self.fields.get("bn") else params

    def describe(self) -> str:
        text = f"{self.fields['init']}: {self.spec.describe()} ({self.source})"
        if self.spec.method == "finetune":
            p1, p5 = self.params(1), self.params(5)
            text += (f"; U 1-shot lr {p1.lr:.3g} x {p1.steps}, 5-shot lr {p5.lr:.3g} x {p5.steps}, "
                     f"BatchNorm {p5.bn_policy}")
        return text

    def episode(self, support: list[Path], queries: list[Path], seed: int) -> tuple[list[float], float]:
        from fewshotseg.data.images import read_mask

        started = time.perf_counter()
        self.seg.fit(support, [p.with_suffix(".png") for p in support], seed=seed,
                     update_params=self.params(len(support)), method=self.spec)
        preds = self.seg.predict(queries)  # the episode's queries together, as `adapt` predicts a folder
        seconds = time.perf_counter() - started
        scores = [iou(p.mask, read_mask(q.with_suffix(".png")).astype(bool)) for p, q in zip(preds, queries, strict=True)]
        return scores, seconds


def corpus_protocol(row: Row, corpus: Path, classes: list[str], shots: int, splits: int = 2) -> dict:
    from fewshotseg.evaluation.intervals import class_bootstrap

    means, owners, seconds = [], [], []
    for ci, name in enumerate(classes):
        files = sorted((corpus / name).glob("*.jpg"), key=lambda p: int(p.stem))
        for s in range(splits):
            order = np.random.default_rng([0, ci, s, shots]).permutation(len(files))
            support = [files[i] for i in order[:shots]]
            queries = [files[i] for i in order[shots: shots + 5]]
            scores, t = row.episode(support, queries, seed=s)
            means.append(float(np.mean(scores)))
            owners.append(name)
            seconds.append(t)
    est = class_bootstrap(means, owners)
    return {"mean": est.mean, "low": est.low, "high": est.high, "splits": len(means), "classes": len(classes),
            "seconds_per_episode": float(np.mean(seconds)), "per_split": means}


def fixtures_loo(row: Row) -> dict:
    from fewshotseg.evaluation.intervals import class_bootstrap

    scores, owners, seconds, shots = [], [], [], set()
    for folder in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        images = sorted(folder.glob("*.jpg"))
        for held in images:
            support = [p for p in images if p != held]
            s, t = row.episode(support, [held], seed=0)
            scores += s
            owners.append(folder.name)
            seconds.append(t)
            shots.add(len(support))
    est = class_bootstrap(scores, owners)
    return {"mean": est.mean, "low": est.low, "high": est.high, "cases": len(scores), "shots": sorted(shots),
            "seconds_per_episode": float(np.mean(seconds)), "per_case": scores}


def adapt_latency(fields: dict[str, str], size: int) -> float:
    """Seconds for `fewshotseg adapt` with 5 support pairs and 20 queries, start-up included."""
    from adapt_latency import folders  # bench/ is this script's own folder, first on sys.path

    with tempfile.TemporaryDirectory() as tmp:
        support, query = folders(Path(tmp))
        cmd = [sys.executable, "-m", "fewshotseg", "adapt", "--init", fields["init"], "--support", str(support),
               "--query", str(query), "--out", str(Path(tmp) / "o"), "--device", "cpu",
               "--method", fields.get("method", "card")]
        if fields["init"] in ("imagenet", "random"):
            cmd += ["--encoder", fields.get("encoder", "tf_efficientnet_lite0"), "--size", str(size)]
        if fields.get("settings") and Path(fields["settings"]).is_file():
            cmd += ["--method-settings", fields["settings"]]
        if fields.get("params"):
            cmd += ["--update-params", fields["params"].replace("{k}", "5")]
        if fields.get("bn"):
            cmd += ["--u-bn-policy", fields["bn"]]
        started = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        return time.perf_counter() - started


def cell(r: dict) -> str:
    return f"{100 * r['mean']:.1f} [{100 * r['low']:.1f}, {100 * r['high']:.1f}] %"


def main() -> None:
    import torch

    from fewshotseg.data.corpus.build import photo_classes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="a make-corpus folder (version 2: real-photo val and test)")
    parser.add_argument("--split", default="val", choices=("val", "test"), help="which real-photo classes")
    parser.add_argument("--row", action="append", required=True, help="LABEL=init=...,method=...,... (see above)")
    parser.add_argument("--size", type=int, default=0, help="input size (0: the first row's card)")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--fixtures", action="store_true", help="also the fixtures' leave-one-out cases")
    parser.add_argument("--latency", action="store_true", help="also time `fewshotseg adapt` (5 + 20 images)")
    parser.add_argument("--out", default="", help="also write the numbers to this JSON file (after each row)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [parse_row(text) for text in args.row]
    corpus = Path(args.corpus)
    classes = photo_classes(corpus, args.split)
    size = args.size
    results: dict = {}
    for label, fields in rows:
        row = Row(label, fields, size)
        size = size or row.seg.size
        if not results:
            print(f"{len(classes)} real-photo {args.split} classes of {corpus}, {size} px; shots {args.shots}",
                  flush=True)
        print(f"  {label}: {row.describe()}", flush=True)
        out: dict = {"fields": fields, "method": row.spec.as_dict(), "described": row.describe()}
        for k in args.shots:
            out[f"{k}shot"] = r = corpus_protocol(row, corpus, classes, k)
            print(f"  {label:24s} {args.split} {k}-shot: {cell(r)} ({r['splits']} splits), "
                  f"{r['seconds_per_episode']:.2f} s/episode", flush=True)
        if args.fixtures:
            out["fixtures"] = r = fixtures_loo(row)
            print(f"  {label:24s} fixtures leave-one-out: {cell(r)} ({r['cases']} cases)", flush=True)
        if args.latency:
            out["adapt_seconds"] = adapt_latency(fields, size)
            print(f"  {label:24s} adapt 5 + 20: {out['adapt_seconds']:.1f} s", flush=True)
        results[label] = out
        if args.out:  # after every row, so that the rows measured so far survive an interrupted run
            Path(args.out).write_text(json.dumps({"split": args.split, "size": size, "classes": classes,
                                                  "rows": results}, indent=2) + "\n")
    print()
    head = " | ".join(f"{args.split} {k}-shot" for k in args.shots)
    print(f"| row | {head} | s/episode (5-shot) |" + (" fixtures LOO |" if args.fixtures else "")
          + (" adapt 5+20 |" if args.latency else ""))
    print("|---|" + "---:|" * (len(args.shots) + 1 + args.fixtures + args.latency))
    for label, out in results.items():
        cells = [cell(out[f"{k}shot"]) for k in args.shots]
        cells.append(f"{out[f'{args.shots[-1]}shot']['seconds_per_episode']:.2f}")
        if args.fixtures:
            cells.append(cell(out["fixtures"]))
        if args.latency:
            cells.append(f"{out['adapt_seconds']:.1f} s")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
