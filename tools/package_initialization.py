"""Turn a meta-training run folder into a packaged initialization (weights + card + model card).

    python tools/package_initialization.py RUN_DIR src/fewshotseg/inits/general --name general \
        [--bench bench-results.json] [--summary "..."]

The run folder's card (written by `meta-train`, with the update parameters `tune` recorded in it per shot count)
is copied with the new name and summary (and, when the run continued from another run's weights, that run's
training record as `training.init_training`); `--bench` adds the measured mean IoUs of `bench/real_photos.py --out` for
the row labelled with the same name. A run folder written without a card gets one first (`write_run_card`, from its
config.yaml and metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from fewshotseg.runs.card import read_card
from fewshotseg.runs.initialization import write_run_card
from fewshotseg.segmenter import FewShotSegmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("out")
    parser.add_argument("--name", required=True)
    parser.add_argument("--summary", default="")
    parser.add_argument("--bench", default="", help="JSON written by bench/real_photos.py --out")
    parser.add_argument("--relative-to", nargs="+", default=[], metavar="FOLDER",
                        help="write paths under these folders relative to them (the work folder, the checkout): the "
                             "card records where the data, run and config were, not whose disk")
    args = parser.parse_args()
    run = Path(args.run_dir)
    if read_card(run) is None:  # a run folder from before cards: derive one from its config and metrics
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        seg = FewShotSegmenter.from_pretrained(run, device="cpu")
        u = {k: v for k, v in seg.card.update_params["default"].items() if k != "source"}
        write_run_card(run, seg.init, size=int(cfg["size"]), update_params=u, source="meta-training's omega",
                       summary="", training={**{k: cfg.get(k) for k in ("algorithm", "init", "data", "splits",
                                                                        "iterations", "meta_batch", "meta_optimizer",
                                                                        "meta_step", "meta_step_final")},
                                             "command": " ".join(cfg.get("environment", {}).get("command", [])),
                                             "git_commit": cfg.get("environment", {}).get("git_commit")})
    seg = FewShotSegmenter.from_pretrained(run, device="cpu")
    card = seg.card
    card.name = args.name
    card.summary = args.summary or card.summary
    card.training["run_dir"] = str(run)
    earlier = _earlier_training(card.training.get("init"))
    if earlier:  # meta-training continued from another run: keep that run's record too
        card.training["init_training"] = earlier
    if args.bench:
        bench = json.loads(Path(args.bench).read_text())
        row = bench["rows"][args.name]
        for key, value in row.items():
            if key.startswith("corpus_"):
                shots = int(key.split("_")[1].rstrip("shot"))
                card.metrics.append({"data": "make-corpus test classes (real photographs, never trained or tuned on)",
                                     "protocol": "paper, 2 splits x 5 queries", "shots": shots,
                                     "mean_iou": value["mean"], "ci95": value["ci95"], "episodes": value["splits"]})
            elif key == "fixtures_loo":
                card.metrics.append({"data": "tests/fixtures/real-photos (4 classes)", "protocol": "leave-one-out",
                                     "shots": "2-3", "mean_iou": value["mean"], "ci95": value["ci95"],
                                     "episodes": value["cases"]})
    if args.relative_to:
        text = json.dumps(card.to_json())
        for folder in args.relative_to:
            text = text.replace(str(Path(folder).resolve()) + "/", "")
        card = type(card).from_json(json.loads(text), "card")
    seg.card = card
    folder = seg.save_pretrained(args.out)
    print(f"packaged {run} as {args.name!r} in {folder} ({(folder / 'model.safetensors').stat().st_size / 1e6:.1f} MB)")


def _earlier_training(init: str | None) -> dict | None:
    """The training record of the run an initialization was continued from (its folder or its weights file)."""
    if not init or init in ("random", "imagenet"):
        return None
    path = Path(init)
    folder = path.parent if path.suffix == ".safetensors" else path
    earlier = read_card(folder) if folder.is_dir() else None
    return dict(earlier.training) if earlier is not None else None


if __name__ == "__main__":
    main()
