"""Turn a meta-training run folder into a packaged initialization (weights + card + model card).

    python tools/package_initialization.py RUN_DIR src/fewshotseg/inits/general --name general \
        --license GPL-3.0-only [--license-file FILE] [--license-notes "..."] [--limitation "..."] \
        [--bench bench-results.json] [--summary "..."] [--relative-to .] [--allow-dirty]

The run folder's card (written by `meta-train`, with the update parameters `tune` recorded in it per shot count)
is copied with the new name and summary (and, when the run continued from another run's weights, that run's
training record as `training.init_training`); `--bench` adds the measured mean IoUs of `bench/real_photos.py --out` for
the row labelled with the same name. A run folder written without a card gets one first (`write_run_card`, from its
config.yaml and metrics.jsonl).

What the card must let a reader recover is refused when missing:
* a dirty checkout: packaging from a git tree with uncommitted changes (or untracked files; the output folder does
  not count) is refused, listing the files; so is a run whose training record says it ran from a dirty tree
  (`git_commit` ending in `+dirty`). `--allow-dirty` packages anyway and, for the checkout's changes, writes their
  diff beside the card as `source.diff` with its SHA-256 in the card (`training.packaging`).
* a licence: the card must name the weights' licence (an SPDX expression: `--license`, or the run card's own);
  `--license-file` copies the licence text beside the weights as `LICENSE`, which the model card links.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fewshotseg.initializations.card import LICENSE_FILE, read_card
from fewshotseg.initializations.pretrained import write_run_card
from fewshotseg.segmenter import FewShotSegmenter


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("out")
    parser.add_argument("--name", required=True)
    parser.add_argument("--summary", default="")
    parser.add_argument("--bench", nargs="+", default=[], metavar="JSON",
                        help="JSON written by bench/real_photos.py --out, or FILE#ROW for a row of another label "
                             "(several: e.g. the validation and the test run)")
    parser.add_argument("--relative-to", nargs="+", default=[], metavar="FOLDER",
                        help="write paths under these folders relative to them (the work folder, the checkout): the "
                             "card records where the data, run and config were, not whose disk")
    parser.add_argument("--license", default="", metavar="SPDX",
                        help="the weights' licence as an SPDX expression (e.g. GPL-3.0-only); required unless the run's "
                             "card names one")
    parser.add_argument("--license-notes", default="", help="why that licence (shown in the model card)")
    parser.add_argument("--license-file", default="", help="the licence text, copied beside the weights as LICENSE")
    parser.add_argument("--limitation", action="append", default=[],
                        help="a measured failure case or limit for the model card (repeat for several)")
    parser.add_argument("--encoder", default="tf_efficientnet_lite0",
                        help="with RUN_DIR `imagenet`: the ImageNet-trained encoder to package (its weights offline)")
    parser.add_argument("--size", type=int, default=0, help="the input size to record (default: the run's own)")
    parser.add_argument("--method", default="", help="the default adaptation method to record in the card "
                        "(finetune, probe, prototype, rf); default: the run card's own")
    parser.add_argument("--method-settings", default="",
                        help="that method's settings: a JSON object, or a file (`tune --method`'s method.json)")
    parser.add_argument("--method-source", default="", help="where the method and its settings were chosen")
    parser.add_argument("--bench-row", default="", help="the row of --bench to record (default: --name)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="package from a checkout with uncommitted changes (their diff is written beside the card "
                             "as source.diff) or a run trained from one")
    args = parser.parse_args(argv)
    try:
        package(args)
    except PackagingError as err:
        sys.exit(f"package_initialization: {err}")


class PackagingError(Exception):
    """What stops packaging, with what to do about it."""


def package(args: argparse.Namespace) -> Path:
    run, out = Path(args.run_dir), Path(args.out)
    checkout = Path(__file__).resolve().parent.parent  # the code that packages (and, committed, trained) the run
    state = source_state(checkout, exclude=[out])
    if state.commit is None and not args.allow_dirty:
        raise PackagingError(f"{checkout} is not a git checkout (or git is missing), so the card could not say which "
                             "code packaged it; run from a git checkout, or pass --allow-dirty")
    if state.changed and not args.allow_dirty:
        listed = "\n  ".join(state.changed)
        raise PackagingError(f"the checkout {checkout} has uncommitted changes, so the card could not say which code "
                             f"packaged it:\n  {listed}\ncommit them (or remove them), or pass --allow-dirty to "
                             "record their diff beside the card as source.diff")
    license_expression = _spdx(args.license) if args.license else ""
    if args.license_file and not Path(args.license_file).is_file():
        raise PackagingError(f"--license-file {args.license_file}: no such file")
    if str(run) == "imagenet":  # no training: the ImageNet-trained encoder as it is (its decoder untrained)
        import torch

        from fewshotseg.models.efficientlab import ModelConfig

        torch.manual_seed(0)  # the unused decoder and head: the same bytes every time
        seg = FewShotSegmenter.from_pretrained("imagenet", device="cpu", size=args.size or 224,
                                               model_config=ModelConfig(encoder=args.encoder))
        seg.card.training = {"algorithm": "none: the ImageNet-trained encoder, unchanged (its decoder and head are "
                                          "freshly initialised, and unused by frozen-feature methods on skip + deep "
                                          "features)", "init": f"imagenet ({args.encoder})"}
        seg.card.summary = seg.card.summary or f"The ImageNet-trained {args.encoder} encoder."
        from fewshotseg.meta_learning.update_routine import UpdateParams

        seg.card.update_params = {"default": {**UpdateParams().as_dict(), "source": "paper Table 3 (not tuned for "
                                                                                    "these weights)"}}
    elif read_card(run) is None:  # a run folder from before cards: derive one from its config and metrics
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        seg = FewShotSegmenter.from_pretrained(run, device="cpu")
        u = {k: v for k, v in seg.card.update_params["default"].items() if k != "source"}
        write_run_card(run, seg.init, size=int(cfg["size"]), update_params=u, source="meta-training's omega",
                       summary="", training={**{k: cfg.get(k) for k in ("algorithm", "init", "data", "splits",
                                                                        "iterations", "meta_batch", "meta_optimizer",
                                                                        "meta_step", "meta_step_final")},
                                             "command": " ".join(cfg.get("environment", {}).get("command", [])),
                                             "git_commit": cfg.get("environment", {}).get("git_commit")})
    if str(run) != "imagenet":
        seg = FewShotSegmenter.from_pretrained(run, device="cpu", size=args.size)
    card = seg.card
    card.name = args.name
    if args.method:
        settings = args.method_settings
        if settings and Path(settings).is_file():
            values = json.loads(Path(settings).read_text())
            values = values.get("settings", values)
        else:
            values = json.loads(settings) if settings else {}
        from fewshotseg.adaptation import MethodSpec

        card.adaptation = {**MethodSpec.of(args.method, values).as_dict(),
                           "source": args.method_source or "package_initialization --method"}
    card.summary = args.summary or card.summary
    if str(run) != "imagenet":
        card.training["run_dir"] = str(run)
    earlier = _earlier_training(card.training.get("init"))
    if earlier:  # meta-training continued from another run: keep that run's record too
        card.training["init_training"] = earlier
    for item in args.bench:
        bench_file, _, label = item.partition("#")  # FILE#ROW names the row of that file
        bench = json.loads(Path(bench_file).read_text())
        label = label or args.bench_row or args.name
        if label not in bench["rows"]:
            raise PackagingError(f"{bench_file}: no row {label!r}; its rows: {', '.join(bench['rows'])}")
        row = bench["rows"][label]
        if "fields" in row:  # bench/real_photos.py's rows since methods: class-bootstrap intervals
            card.metrics += bench_metrics(row, bench.get("split", "test"), bench.get("classes", []))
            row = {}
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
    card.license = license_expression or card.license
    if not card.license:
        raise PackagingError(f"the card of {run} names no licence for the weights; choose one that the training data's "
                             "licences allow (see the README's Licences section) and pass it as --license SPDX, e.g. "
                             "--license GPL-3.0-only, with --license-file for its text")
    card.license_notes = args.license_notes or card.license_notes
    card.limitations = list(args.limitation) or card.limitations
    dirty_runs = [t.get("run_dir") or t.get("command") or "a run" for t in _phases(card.training)
                  if str(t.get("git_commit") or "").endswith("+dirty")]
    if dirty_runs and not args.allow_dirty:
        raise PackagingError(f"{', '.join(map(str, dirty_runs))} ran from a checkout with uncommitted changes (its "
                             "git_commit ends in +dirty) that were not recorded, so its code cannot be recovered; "
                             "train again from a clean checkout, or pass --allow-dirty (the model card then says so)")
    card.training["packaging"] = {"git_commit": state.commit}
    if state.changed:
        card.training["packaging"].update({"changed": state.changed, "diff_file": DIFF_FILE,
                                           "diff_sha256": hashlib.sha256(state.diff).hexdigest()})
    if args.relative_to:
        text = json.dumps(card.to_json())
        for folder in args.relative_to:
            text = text.replace(str(Path(folder).resolve()) + "/", "")
        card = type(card).from_json(json.loads(text), "card")
    seg.card = card
    out.mkdir(parents=True, exist_ok=True)
    if args.license_file and Path(args.license_file).resolve() != (out / LICENSE_FILE).resolve():
        shutil.copyfile(args.license_file, out / LICENSE_FILE)  # before the card, so that the model card links it
    (out / DIFF_FILE).unlink(missing_ok=True)  # a diff left by an earlier, dirty packaging is not this one's
    folder = seg.save_pretrained(out)
    if state.changed:
        (folder / DIFF_FILE).write_bytes(state.diff)
        print(f"packaged from a dirty checkout: {len(state.changed)} changed file(s), diff in {folder / DIFF_FILE}")
    print(f"packaged {run} as {args.name!r} in {folder} ({(folder / 'model.safetensors').stat().st_size / 1e6:.1f} MB)")
    return folder


def bench_metrics(row: dict, split: str, classes: list[str]) -> list[dict]:
    """The card's metric rows from one row of `bench/real_photos.py --out`."""
    what = ("make-corpus real-photo test classes (never trained or tuned on)" if split == "test" else
            "make-corpus real-photo validation classes (where the method and settings were chosen)")
    out = []
    for key, value in row.items():
        if key.endswith("shot") and key[:-4].isdigit():
            out.append({"data": f"{what}, {value.get('classes', len(classes))} classes",
                        "protocol": "paper, 2 splits x 5 queries; class bootstrap", "shots": int(key[:-4]),
                        "mean_iou": value["mean"], "low": value["low"], "high": value["high"],
                        "episodes": value["splits"], "seconds_per_episode": value.get("seconds_per_episode")})
        elif key == "fixtures":
            out.append({"data": "tests/fixtures/real-photos (4 classes)", "protocol": "leave-one-out; class bootstrap",
                        "shots": "/".join(map(str, value.get("shots", []))), "mean_iou": value["mean"],
                        "low": value["low"], "high": value["high"], "episodes": value["cases"]})
    return out


DIFF_FILE = "source.diff"


@dataclass
class SourceState:
    commit: str | None  # HEAD, or None outside a git checkout
    changed: list[str] = field(default_factory=list)  # paths with uncommitted changes, untracked ones included
    diff: bytes = b""  # `git diff HEAD` of those paths, untracked files as new files


def source_state(checkout: Path, exclude: Sequence[Path] = ()) -> SourceState:
    """HEAD of the git checkout and its uncommitted changes (paths under `exclude` left out: the output folder)."""
    def git(*cmd: str, ok: tuple[int, ...] = (0,)) -> bytes:
        done = subprocess.run(["git", *cmd], cwd=checkout, capture_output=True, timeout=60)
        if done.returncode not in ok:
            raise PackagingError(f"git {' '.join(cmd[:2])} failed in {checkout}: {done.stderr.decode().strip()[:300]}")
        return done.stdout

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return SourceState(None)
    if head.returncode != 0:
        return SourceState(None)
    root = Path(git("rev-parse", "--show-toplevel").decode().strip())
    skip = []
    for path in exclude:
        try:
            skip.append(Path(path).resolve().relative_to(root).as_posix().rstrip("/") + "/")
        except ValueError:  # outside the checkout
            pass
    entries = git("-C", str(root), "status", "--porcelain=v1", "-z", "--untracked-files=all").split(b"\0")
    changed, untracked, i = [], [], 0
    while i < len(entries):
        entry = entries[i].decode()
        i += 1
        if not entry:
            continue
        status, path = entry[:2], entry[3:]
        if status[0] in "RC":  # a rename's source path follows
            i += 1
        if any((path + "/").startswith(s) for s in skip):
            continue
        changed.append(path)
        if status == "??":
            untracked.append(path)
    diff = b""
    if changed:
        tracked = [p for p in changed if p not in untracked]
        if tracked:
            diff += git("-C", str(root), "diff", "--binary", "HEAD", "--", *tracked)
        for path in untracked:
            diff += git("-C", str(root), "diff", "--binary", "--no-index", "--", "/dev/null", path, ok=(0, 1))
    return SourceState(head.stdout.strip(), sorted(changed), diff)


def _spdx(expression: str) -> str:
    """The expression in its canonical SPDX form; an unknown licence identifier is refused."""
    try:
        from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression
    except ImportError:  # packaging < 24.2: take it as given
        return expression.strip()
    try:
        return str(canonicalize_license_expression(expression))
    except InvalidLicenseExpression as err:
        raise PackagingError(f"--license {expression!r}: not an SPDX licence expression ({err}); use identifiers from "
                             "https://spdx.org/licenses/, e.g. GPL-3.0-only or MIT") from None


def _phases(training: dict) -> list[dict]:
    phases = []
    while isinstance(training, dict) and training:
        phases.append(training)
        training = training.get("init_training") or {}
    return phases


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
