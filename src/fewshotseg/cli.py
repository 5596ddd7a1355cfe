"""The `fewshotseg` command: the only module that knows argparse.

Each verb adds its flags in an `add_<verb>` function and runs in a `run_<verb>` function that turns the flags into
library calls. Heavy imports (torch, timm) happen inside the `run_` functions so that `--help` is instant.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

STARTED = time.monotonic()  # the command's start: `--max-minutes` counts importing torch and timm too


def at_least(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high], so a bad count stops at the command line, naming its flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: {allowed}")
        return value

    parse.__name__ = "count"
    return parse


def image_size(text: str) -> int:
    """An argparse type for --size: the encoder's stride (16) must divide it, and it gives >= 2x2 deep features."""
    from fewshotseg.config import ENCODER_STRIDE

    value = at_least(2 * ENCODER_STRIDE)(text)
    if value % ENCODER_STRIDE:
        raise argparse.ArgumentTypeError(f"{value} is not a multiple of {ENCODER_STRIDE} (the encoder's stride)")
    return value


image_size.__name__ = "size"


def add_model_info(sub: argparse._SubParsersAction) -> None:
    from fewshotseg.models.efficientlab import VARIANTS

    p = sub.add_parser("model-info", help="print an EfficientLab variant's parameter counts, channels and strides")
    p.add_argument("--variant", default="efficientlab-3", choices=list(VARIANTS))
    p.add_argument("--encoder", default="tf_efficientnet_b0", help="any timm EfficientNet/MobileNet-family name")
    p.add_argument("--size", type=image_size, default=224, help="input size used to measure feature shapes")


def run_model_info(args: argparse.Namespace) -> int:
    from fewshotseg.models.efficientlab import ModelConfig, build_model, describe

    model = build_model(ModelConfig(variant=args.variant, encoder=args.encoder))
    print(describe(model, size=args.size))
    return 0


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="decode a dataset once into the memory-mapped cache")
    p.add_argument("data", help="dataset folder (FSS-1000 layout), a PASCAL VOC2012 folder, or fp-k:FSS_DIR,VOC_DIR")
    p.add_argument("--size", type=at_least(1), default=224, help="square size images and masks are resized to")
    p.add_argument("--strict", action="store_true", help="stop at the first bad file instead of skipping it")


def run_prepare(args: argparse.Namespace) -> int:
    from fewshotseg.data.cache import prepare

    prepare(args.data, size=args.size, strict=args.strict)
    return 0


def add_check_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-data", help="load a dataset and report classes, pairs, sizes and every problem")
    p.add_argument("data", help="dataset folder (FSS-1000 layout), a PASCAL VOC2012 folder, or fp-k:FSS_DIR,VOC_DIR")
    p.add_argument("--size", type=at_least(1), default=224)
    p.add_argument("--strict", action="store_true", help="exit non-zero when any problem is found")


def run_check_data(args: argparse.Namespace) -> int:
    from fewshotseg.data.doctor import check_data

    return check_data(args.data, size=args.size, strict=args.strict)


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per config field, default None so that only flags the user gives override the config file."""
    from dataclasses import MISSING, fields

    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = "" if f.default is MISSING else f.default
        help_text = f"{f.metadata.get('help', '')} [default: {default}]".replace("%", "%%")
        if f.type in ("list[int]",):
            parser.add_argument(flag, type=int, nargs="+", default=None, help=help_text)
        elif f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            parser.add_argument(flag, type=kind, default=None, help=help_text, metavar=f.name.upper())


def config_from_args(cls: type, args: argparse.Namespace):
    from dataclasses import fields

    from fewshotseg.config import resolve

    overrides = {f.name: getattr(args, f.name, None) for f in fields(cls)}
    cfg = resolve(cls, preset=getattr(args, "preset", None), file=getattr(args, "config", None), **overrides)
    return with_init_architecture(cfg, given_settings(cls, args), args.verb)


def given_settings(cls: type, args: argparse.Namespace) -> set[str]:
    """The settings the user gave: flags, the --config file's fields and the preset's."""
    from dataclasses import fields

    from fewshotseg.config import load_yaml, presets_of

    presets = presets_of(cls)
    given = {f.name for f in fields(cls) if getattr(args, f.name, None) is not None}
    if getattr(args, "config", None):
        values = load_yaml(args.config)
        given |= set(values) | set(presets.get(values.get("preset"), {}) if isinstance(values.get("preset"), str) else ())
    return given | set(presets.get(getattr(args, "preset", None) or "", {}))


def with_init_architecture(cfg, given: set[str], verb: str):
    """`cfg` with the variant and encoder of its `--init` when that initialization carries its own (a file, a
    folder, `general`), so what is recorded (config.yaml, run.json, results.json) is what runs. A given variant or
    encoder that disagrees is refused, naming both; a given --size that differs from the initialization's wins, and
    says so."""
    from dataclasses import fields, replace

    from fewshotseg.config import flag_name
    from fewshotseg.errors import SettingError
    from fewshotseg.initializations.pretrained import ARCHITECTURE, init_architecture

    names = {f.name for f in fields(cfg)}
    if "inits" in names and set(ARCHITECTURE) <= names:
        return with_inits_architectures(cfg, given, verb)
    if "init" not in names or not set(ARCHITECTURE) <= names:
        return cfg
    own = init_architecture(cfg.init)
    if own is None:
        return cfg
    architecture, size, where = own
    clash = [k for k in ARCHITECTURE if k in given and getattr(cfg, k) != architecture[k]]
    if clash:
        asked = ", ".join(f"{flag_name(k)} {getattr(cfg, k)}" for k in clash)
        theirs = ", ".join(f"{k} {architecture[k]}" for k in clash)
        raise SettingError(f"--init {cfg.init} has {theirs} (recorded in {where}), but {asked} was given: an "
                           f"initialization's weights fix its architecture. Leave out {', '.join(flag_name(k) for k in clash)} "
                           "(it is taken from the initialization), or pass --init random or imagenet to build that "
                           "architecture")
    cfg = replace(cfg, **architecture)
    if "size" in names and cfg.size and size and cfg.size != size:
        why = "as given" if "size" in given else "the default"
        print(f"fewshotseg {verb}: note: running at {cfg.size} px ({why}); the initialization was trained at {size} px "
              f"({where})" + ("" if "size" in given else f"; pass --size {size} to keep its size"), file=sys.stderr)
    return cfg


def with_inits_architectures(cfg, given: set[str], verb: str):
    """The several-initialization commands (fp-k, analyze-weights): --variant and --encoder build the `random` and
    `imagenet` ones; an initialization with weights keeps its own. A given --variant or --encoder that disagrees with
    one of those is refused when no `random` or `imagenet` is given (the flag would do nothing), and said otherwise;
    an initialization trained at another size than --size is said (all are compared at one size)."""
    from fewshotseg.config import flag_name
    from fewshotseg.errors import SettingError
    from fewshotseg.evaluation.fp_k import labelled
    from fewshotseg.initializations.pretrained import ARCHITECTURE, init_architecture

    specs = labelled(cfg.inits)
    own = {label: init_architecture(spec) for label, spec in specs.items()}
    built = [label for label, arch in own.items() if arch is None]
    for k in ARCHITECTURE:
        if k not in given:
            continue
        clash = {label: arch for label, arch in own.items() if arch is not None and arch[0][k] != getattr(cfg, k)}
        if not clash:
            continue
        theirs = "; ".join(f"{label} has {k} {arch[0][k]} (recorded in {arch[2]})" for label, arch in clash.items())
        if not built:
            raise SettingError(f"{flag_name(k)} {getattr(cfg, k)} was given, but {theirs}: an initialization's weights "
                               f"fix its architecture, and no --init random or imagenet is given for the flag to build. "
                               f"Leave out {flag_name(k)}, or add --init LABEL=imagenet (or random) to compare that "
                               "architecture")
        print(f"fewshotseg {verb}: note: {flag_name(k)} {getattr(cfg, k)} builds {', '.join(built)} only; {theirs} "
              "and keeps it", file=sys.stderr)
    why = "as given" if "size" in given else "the default"
    for label, arch in own.items():
        if arch is not None and arch[1] and arch[1] != cfg.size:
            print(f"fewshotseg {verb}: note: running every initialization at {cfg.size} px ({why}); {label} was "
                  f"trained at {arch[1]} px ({arch[2]})", file=sys.stderr)
    return cfg


def add_make_synthetic(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-synthetic", help="generate the built-in benchmark (FSS-1000 layout with its own splits)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", type=at_least(1, 1728), default=1000, help="number of classes (max 1728)")
    p.add_argument("--pairs", type=at_least(1), default=10,
                   help="image/mask pairs per class (FSS-1000: 10; FP-k needs 420)")
    p.add_argument("--size", type=at_least(16), default=64, help="image size in pixels")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--workers", type=at_least(1), default=1, help="processes generating classes in parallel")


def run_make_synthetic(args: argparse.Namespace) -> int:
    from fewshotseg.data.synthetic import SyntheticSpec, make_synthetic

    spec = SyntheticSpec(classes=args.classes, pairs=args.pairs, size=args.size, seed=args.seed)
    splits = make_synthetic(args.out, spec, workers=args.workers)
    print(f"wrote {spec.classes} classes x {spec.pairs} pairs at {spec.size} px to {args.out} "
          f"({', '.join(f'{k} {len(v)}' for k, v in splits.items())} classes)")
    return 0


def add_make_corpus(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-corpus", help="build the realistic training corpus (real art and photographs with exact "
                                           "masks) from Debian packages")
    p.add_argument("--out", required=True, help="output folder (FSS-1000 layout + splits.json + MANIFEST.json)")
    p.add_argument("--cache", default="", help="where source packages are downloaded and unpacked "
                                               "(default: $FEWSHOTSEG_CORPUS_CACHE or ~/.cache/fewshotseg/corpus)")
    p.add_argument("--debs", default="", help="build offline from the .deb files in this folder (no apt-get)")
    p.add_argument("--packages", default="", help="comma-separated subset of the source packages (default: all)")
    p.add_argument("--size", type=int, default=224, help="stored image size in pixels")
    p.add_argument("--pairs", type=int, default=10, help="image/mask pairs per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out folder")


def run_make_corpus(args: argparse.Namespace) -> int:
    from fewshotseg.data.corpus import CorpusSpec, make_corpus

    if args.size < 32 or args.pairs < 2:
        raise ValueError(f"--size {args.size} --pairs {args.pairs}: need a size >= 32 px and at least 2 pairs")
    spec = CorpusSpec(size=args.size, pairs=args.pairs, seed=args.seed)
    packages = [p.strip() for p in args.packages.split(",") if p.strip()] or None
    make_corpus(args.out, spec, cache=args.cache or None, debs=args.debs or None, packages=packages,
                overwrite=args.overwrite)
    return 0


def add_meta_train(sub: argparse._SubParsersAction) -> None:
    from fewshotseg.training.meta_train import MetaTrainConfig

    p = sub.add_parser("meta-train", help="meta-learn an initialization with Reptile, FOMAML or FOMAML*",
                       description="Meta-learn an initialization. Settings: defaults (the paper's Table 3), then "
                       "--preset, then --config FILE (YAML), then flags. Run under torchrun to spread each "
                       "meta-batch over processes.")
    p.add_argument("--config", help="YAML file of settings (see configs/)")
    p.add_argument("--preset", choices=list(MetaTrainConfig.PRESETS),
                   help="named settings; cpu-quick departs from the paper")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    add_overwrite_flag(p)
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="fit the number of meta-iterations to this wall time, validations and checkpoints included "
                        "(re-fitted every 10 iterations; 0: off)")
    add_config_flags(p, MetaTrainConfig)


def run_meta_train(args: argparse.Namespace) -> int:
    from fewshotseg.training.meta_train import MetaTrainConfig, meta_train

    cfg = config_from_args(MetaTrainConfig, args)
    meta_train(cfg, resume=args.resume, overwrite=args.overwrite, max_minutes=args.max_minutes, started=STARTED,
               continue_to=cfg.iterations if "iterations" in given_settings(MetaTrainConfig, args) else None)
    return 0


def add_joint_train(sub: argparse._SubParsersAction) -> None:
    from fewshotseg.training.joint_train import JointTrainConfig

    p = sub.add_parser("joint-train", help="train the joint-trained baseline (all training classes + background)",
                       description="Train EfficientLab on every training class plus background as one multi-class "
                       "problem (paper §5.4); use the result as --init anywhere (its head is replaced by a fresh "
                       "two-class head).")
    p.add_argument("--config", help="YAML file of settings")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    add_overwrite_flag(p)
    add_config_flags(p, JointTrainConfig)


def run_joint_train(args: argparse.Namespace) -> int:
    from fewshotseg.training.joint_train import JointTrainConfig, joint_train

    cfg = config_from_args(JointTrainConfig, args)
    joint_train(cfg, resume=args.resume, overwrite=args.overwrite, started=STARTED,
                given=frozenset(given_settings(JointTrainConfig, args)))
    return 0


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of another run in --run-dir (otherwise that is refused)")



def add_update_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that override single update-routine hyperparameters on top of --update-params."""
    from dataclasses import fields

    from fewshotseg.meta_learning.update_routine import UpdateParams

    group = parser.add_argument_group("update routine U (override --update-params)")
    for f in fields(UpdateParams):
        kind = {"int": int, "float": float}.get(f.type, str)
        group.add_argument("--u-" + f.name.replace("_", "-"), dest="u_" + f.name, type=kind, default=None,
                           metavar=f.name.upper(), help=f"U's {f.name} [default: {f.default}]")


def u_overrides(args: argparse.Namespace) -> dict:
    """The single U hyperparameters given as --u-* flags."""
    from dataclasses import fields

    from fewshotseg.meta_learning.update_routine import UpdateParams

    return {f.name: getattr(args, "u_" + f.name) for f in fields(UpdateParams)
            if getattr(args, "u_" + f.name, None) is not None}


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    from fewshotseg.evaluation.evaluate import EvaluateConfig

    p = sub.add_parser("evaluate", help="adapt an initialization to test tasks (its card's method, or --method) and "
                       "report mean IoU ± CI95",
                       description="Adapt an initialization on every test task with its card's adaptation method (the "
                       "update routine U when the card names none; --method chooses another) and score "
                       "the query images (paper protocol: 2 splits of k support + 5 query per task; hsnet: one "
                       "episode per query image). Writes episodes.jsonl, results.json and predictions.npz.")
    p.add_argument("--config", help="YAML file of settings")
    add_config_flags(p, EvaluateConfig, skip=("shots",))
    p.add_argument("--shots", type=int, nargs="+", default=None, help="support images per task [default: 1 5]")
    add_overwrite_flag(p)
    add_update_flags(p)


def run_evaluate(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from fewshotseg.evaluation.evaluate import EvaluateConfig, evaluate

    cfg = config_from_args(EvaluateConfig, args)
    evaluate(cfg, u_overrides=u_overrides(args), overwrite=args.overwrite)
    # evaluate has printed (and logged) the method and each shot count's mean IoU line; here only where it all is
    print(f"results: {Path(cfg.run_dir) / 'results.json'} (a report: fewshotseg report {shlex.quote(cfg.run_dir)})")
    return 0


def add_tune(sub: argparse._SubParsersAction) -> None:
    from fewshotseg.tuning.uho import TuneConfig

    p = sub.add_parser("tune", help="update-hyperparameter optimisation (UHO): Bayesian optimisation of U on "
                       "validation tasks", description="Tune U's hyperparameters for one initialization with "
                       "Optuna's GPSampler (half the trials random first); steps come from early stopping (the "
                       "median best step over tasks). Several processes may share one study via --storage.")
    p.add_argument("--config", help="YAML file of settings")
    add_overwrite_flag(p)
    add_config_flags(p, TuneConfig)


def run_tune(args: argparse.Namespace) -> int:
    from fewshotseg.tuning.uho import TuneConfig, tune

    cfg = config_from_args(TuneConfig, args)
    result = tune(cfg, overwrite=args.overwrite)
    folder = result["card"]
    if "update_params" not in result:  # another adaptation method than U
        print(f"best: mean IoU {100 * result['objective']:.2f} % on validation tasks with {result['method']} "
              f"{result['settings']} (trial {result['trial']}); written to {cfg.run_dir}/method.json")
        if folder is not None:
            print(f"the {result['method']} method and its settings recorded in {folder}/card.json as the default "
                  "(adapt, evaluate, serve and FewShotSegmenter use them)")
        return 0
    params = result["update_params"]
    print(f"best: mean IoU {100 * result['objective']:.2f} % on validation tasks with lr {params['lr']:.3g}, "
          f"{params['steps']} steps (trial {result['trial']}); written to {cfg.run_dir}/update_params.json")
    if folder is not None:
        print(f"{cfg.shots}-shot update parameters recorded in {folder}/card.json (adapt and evaluate use them)")
    return 0


def add_fp_k(sub: argparse._SubParsersAction) -> None:
    from fewshotseg.evaluation.fp_k import FPKConfig

    p = sub.add_parser("fp-k", help="the FP-k experiment: mean IoU against the number of training images k",
                       description="For each initialization, task and repeat: nested k-prefixes sharing one "
                       "20-image test set; U with UHO's parameters for k < 10, early stopping then retraining "
                       "for k >= 10 (paper App. E).")
    p.add_argument("--config", help="YAML file of settings")
    add_overwrite_flag(p)
    add_config_flags(p, FPKConfig, skip=("inits", "update_params", "ks"))
    p.add_argument("--init", dest="inits", action="append", default=None, metavar="LABEL=SPEC",
                   help="an initialization to compare (repeatable): LABEL=checkpoint|random|imagenet")
    p.add_argument("--update-params", dest="update_params", action="append", default=None, metavar="LABEL=FILE",
                   help="UHO parameters of one initialization, used for k < 10 (repeatable)")
    p.add_argument("--ks", type=int, nargs="+", default=None, help="training-set sizes [default: 1 5 10 50 100 200 400]")


def run_fp_k(args: argparse.Namespace) -> int:
    from fewshotseg.evaluation.fp_k import FPKConfig, fp_k

    cfg = config_from_args(FPKConfig, args)
    summary = fp_k(cfg, overwrite=args.overwrite)
    for label, by_k in summary.items():
        cells = ", ".join(f"k={k}: {100 * v['mean']:.1f}±{100 * v['ci95']:.1f}" for k, v in by_k.items())
        print(f"{label}: {cells}")
    return 0


def add_analyze_weights(sub: argparse._SubParsersAction) -> None:
    from fewshotseg.evaluation.analyze_weights import AnalyzeConfig

    p = sub.add_parser("analyze-weights", help="how far U moves each initialization, per block (paper App. G)")
    p.add_argument("--config", help="YAML file of settings")
    add_overwrite_flag(p)
    add_config_flags(p, AnalyzeConfig, skip=("inits",))
    p.add_argument("--init", dest="inits", action="append", default=None, metavar="LABEL=SPEC",
                   help="an initialization (repeatable; two or more to compare)")


def run_analyze_weights(args: argparse.Namespace) -> int:
    from fewshotseg.evaluation.analyze_weights import AnalyzeConfig, analyze_weights

    cfg = config_from_args(AnalyzeConfig, args)
    summary = analyze_weights(cfg, overwrite=args.overwrite)
    for label, blocks in summary.items():
        net = blocks.get("network", {}).get("d1", {})
        print(f"{label}: whole-network d1 = {net.get('mean', float('nan')):.4f} ± {net.get('ci95', float('nan')):.4f}")
    return 0


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="a markdown report with tables and PNG figures, from run folders alone")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (or folders holding runs)")
    p.add_argument("--out", default="report", help="output folder for report.md and figures/")
    p.add_argument("--title", default="fewshotseg report")
    p.add_argument("--notes", help="a markdown file inserted as 'Settings and departures from the paper'")


def run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fewshotseg.reports.report import write_report

    missing = [d for d in args.run_dirs if not Path(d).is_dir()]
    if missing:
        raise FileNotFoundError(f"no such run folder: {', '.join(missing)}; pass folders written by fewshotseg "
                                "commands (or folders holding them)")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise NotADirectoryError(f"--out {args.out} is a file; choose a folder for report.md and figures/")
    notes = Path(args.notes).read_text() if args.notes else None
    print(write_report(args.run_dirs, args.out, title=args.title, notes=notes))
    return 0


def add_adapt(sub: argparse._SubParsersAction) -> None:
    from fewshotseg.adapt import AdaptConfig

    p = sub.add_parser("adapt", help="adapt an initialization to your labelled images and segment new ones",
                       description="Fine-tune an initialization with U on a folder of labelled support images, "
                       "then write a mask PNG and an overlay PNG for every query image (at its own size); "
                       "optionally save the adapted weights (safetensors) and an ONNX export.")
    p.add_argument("--config", help="YAML file of settings")
    add_config_flags(p, AdaptConfig)
    add_update_flags(p)


def run_adapt(args: argparse.Namespace) -> int:
    from fewshotseg.adapt import AdaptConfig, adapt

    cfg = config_from_args(AdaptConfig, args)
    summary = adapt(cfg, u_overrides=u_overrides(args))
    print(f"wrote {len(summary['queries'])} mask(s) and overlay(s) to {cfg.out}")
    for failure in summary["failed"]:
        print(f"skipped: {failure}", file=sys.stderr)
    for entry in summary.get("skipped", []):  # not images: listed, but the command did what it was asked
        print(f"skipped: {entry}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="label a whole folder tree with a fitted segmenter (masks, COCO, YOLO)",
                       description="Apply a fitted segmenter (adapt --save-weights' <out>/adapted/, or "
                       "save_pretrained's folder) to every image of a folder tree: batched, over --workers "
                       "processes or a GPU, resumable (a re-run skips what is written), shardable over machines.")
    p.add_argument("--model", help="the fitted segmenter's folder (card.json + model.safetensors)")
    p.add_argument("--images", help="the folder tree of .jpg/.jpeg/.png images to label")
    p.add_argument("--out", help="output folder (not inside --images); its layout keeps the tree's relative paths")
    p.add_argument("--format", default="png", help="one or more of png (masks/<path>_mask.png, 0/255), coco "
                   "(coco.json, RLE) and yolo (labels/<path>.txt, Ultralytics segmentation), comma-separated "
                   "[default: png]")
    p.add_argument("--label", default="", help="the COCO category's name [default: the card's name]")
    p.add_argument("--coco-polygons", action="store_true", help="COCO segmentation as polygons (outer contours; "
                   "holes filled) instead of exact RLE: editable in CVAT, importable by Label Studio's converter")
    p.add_argument("--polygon-tolerance", type=float, default=0.0, metavar="PX",
                   help="simplify polygons (COCO, YOLO) within this many pixels: 0 keeps each region's pixel "
                   "outline exactly; 1 or more gives far fewer vertices to edit [default: 0]")
    p.add_argument("--threshold", type=float, default=0.5, help="foreground probability threshold [default: 0.5]")
    p.add_argument("--batch-size", type=at_least(1), default=8, metavar="N",
                   help="images per batch; under the transductive BatchNorm policy a batch is normalised together "
                   "[default: 8]")
    p.add_argument("--workers", type=at_least(1), default=1, metavar="N",
                   help="processes, each loading the segmenter once, one torch thread each (1: this process) "
                   "[default: 1]")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto [default: auto]")
    p.add_argument("--shard", default="0/1", metavar="I/N", help="take only the batches whose index %% N == I: "
                   "run I = 0 ... N-1 anywhere (one machine each), same flags, same --out [default: 0/1]")
    p.add_argument("--tile", type=at_least(0), default=0, metavar="PX", help="predict large images in overlapping "
                   "tiles of this side (image pixels; each resized to the network's input) [default: 0, off]")
    p.add_argument("--overlap", type=at_least(0), default=64, metavar="PX",
                   help="overlap of neighbouring tiles; probabilities are averaged there [default: 64]")
    p.add_argument("--tile-above", type=at_least(0), default=0, metavar="PIXELS", help="tile only images of more "
                   "pixels than this [default: 0, images with a side over --tile]")
    p.add_argument("--overwrite", action="store_true", help="predict every image again and replace its outputs "
                   "(also after a change of segmenter or settings, and files in --out that predict did not write)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--merge-coco", nargs="+", metavar="FILE", help="merge COCO files instead of predicting: the "
                   "merged file first, then the shards' (e.g. out/coco-shard-0-of-2.json out/coco-shard-1-of-2.json)")


def run_predict(args: argparse.Namespace) -> int:
    from fewshotseg.errors import UserError
    from fewshotseg.predict import PredictOptions, merge_coco_files, predict_folder

    if args.merge_coco:
        if args.model or args.images or args.out:
            raise UserError("--merge-coco merges COCO files and predicts nothing: leave out --model, --images and "
                            "--out")
        target, *sources = args.merge_coco
        merged = merge_coco_files(target, sources, overwrite=args.overwrite)
        print(f"wrote {target}: {len(merged['images'])} image(s), {len(merged['annotations'])} annotation(s) from "
              f"{len(sources)} file(s)")
        return 0
    missing = [f"--{name}" for name in ("model", "images", "out") if not getattr(args, name)]
    if missing:
        raise UserError(f"predict needs {', '.join(missing)}: e.g. fewshotseg predict --model run/adapted "
                        "--images photos/ --out labels/")
    summary = predict_folder(PredictOptions(
        model=args.model, images=args.images, out=args.out, formats=args.format, label=args.label,
        coco_polygons=args.coco_polygons, polygon_tolerance=args.polygon_tolerance, threshold=args.threshold,
        batch_size=args.batch_size, workers=args.workers, device=args.device, shard=args.shard, tile=args.tile,
        overlap=args.overlap, tile_above=args.tile_above, overwrite=args.overwrite, progress=not args.no_progress))
    rate = f" at {summary['images_per_second']:g} images/s" if summary["images_per_second"] else ""
    where = (f"{summary['in_shard']} in shard {summary['shard']} of {summary['listed']} listed" if summary["shard"]
             else f"{summary['listed']} listed")
    print(f"predicted {summary['predicted']} image(s){rate} into {args.out} ({summary['already_done']} already "
          f"done by an earlier run, {where})")
    if summary["coco"]:
        print(f"COCO: {summary['coco']}")
    problems = [f"{s['file']}: {s['reason']}" for s in summary["failed"] + summary["skipped"]]
    for line in problems[:10]:
        print(f"skipped: {line}", file=sys.stderr)
    if len(problems) > 10:
        print(f"skipped: ... and {len(problems) - 10} more; every one is listed in {args.out}/predict*.json",
              file=sys.stderr)
    return 1 if summary["failed"] else 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    from fewshotseg.adaptation import METHODS

    p = sub.add_parser("serve", help="a web page to label, adapt and segment your own images (extra: app)",
                       description="Serve one page: upload support images, paint or upload their masks, adapt an "
                       "initialization with U and segment query images; download masks, weights and ONNX. "
                       "Needs the app extra: pip install 'fewshotseg[app]'.")
    p.add_argument("--init", dest="inits", action="append", default=None, metavar="INIT",
                   help="an initialization offered in the page (repeatable; the first is the default): a folder "
                   "with card.json, a run folder, model.safetensors, imagenet or random [default: general]")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (others than 127.0.0.1 are warned "
                   "about: anyone who reaches it can use the page) [default: 127.0.0.1]")
    p.add_argument("--port", type=at_least(1, 65535), default=7860, help="[default: 7860]")
    p.add_argument("--auth", default="", metavar="USER:PASS", help="ask for this user name and password")
    p.add_argument("--max-image-side", type=at_least(16), default=4096, metavar="N",
                   help="largest image side accepted, in pixels [default: 4096]")
    p.add_argument("--max-images", type=at_least(1), default=20, metavar="N",
                   help="support images, and query images, per session [default: 20]")
    p.add_argument("--max-file-mb", type=at_least(1), default=20, metavar="MB",
                   help="largest uploaded file [default: 20]")
    p.add_argument("--concurrency", type=at_least(1), default=1, metavar="N",
                   help="adaptations run at once; others wait in a queue that shows their position [default: 1]")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto [default: cpu]")
    p.add_argument("--method", default="card", choices=("card", *METHODS),
                   help="the page's starting adaptation method: card (the initialization's own), finetune (U), "
                   "probe, prototype or rf [default: card]")


def run_serve(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        from fewshotseg.errors import UserError

        raise UserError("serve needs the app extra: pip install 'fewshotseg[app]'") from None
    from fewshotseg.app.serve import ServeOptions, serve
    from fewshotseg.app.workspace import Limits

    limits = Limits(max_image_side=args.max_image_side, max_images=args.max_images, max_file_mb=args.max_file_mb)
    serve(ServeOptions(inits=args.inits or ["general"], host=args.host, port=args.port, auth=args.auth,
                       limits=limits, concurrency=args.concurrency, device=args.device, method=args.method))
    return 0


def add_quickstart(sub: argparse._SubParsersAction) -> None:
    from fewshotseg.quickstart import QuickstartConfig

    p = sub.add_parser("quickstart", help="the whole system on the built-in benchmark in ~10 minutes on 2 CPU cores",
                       description="Make the built-in benchmark, meta-train FOMAML*, train the joint baseline, run "
                       "UHO, evaluate 1- and 5-shot on held-out test tasks and write a report with figures.")
    add_config_flags(p, QuickstartConfig)
    p.add_argument("--tiny", action="store_true", help="a seconds-long run on a toy benchmark (a smoke test)")


def run_quickstart(args: argparse.Namespace) -> int:
    from fewshotseg.quickstart import QuickstartConfig, quickstart, tiny

    cfg = config_from_args(QuickstartConfig, args)
    quickstart(tiny(cfg) if args.tiny else cfg)
    return 0


VERBS = {
    "quickstart": (add_quickstart, run_quickstart),
    "adapt": (add_adapt, run_adapt),
    "predict": (add_predict, run_predict),
    "serve": (add_serve, run_serve),
    "report": (add_report, run_report),
    "tune": (add_tune, run_tune),
    "fp-k": (add_fp_k, run_fp_k),
    "analyze-weights": (add_analyze_weights, run_analyze_weights),
    "joint-train": (add_joint_train, run_joint_train),
    "evaluate": (add_evaluate, run_evaluate),
    "make-synthetic": (add_make_synthetic, run_make_synthetic),
    "make-corpus": (add_make_corpus, run_make_corpus),
    "meta-train": (add_meta_train, run_meta_train),
    "model-info": (add_model_info, run_model_info),
    "prepare": (add_prepare, run_prepare),
    "check-data": (add_check_data, run_check_data),
}


def build_parser() -> argparse.ArgumentParser:
    from fewshotseg import __version__

    parser = argparse.ArgumentParser(
        prog="fewshotseg",
        description="Meta-learned initializations for few-shot image segmentation (EfficientLab, FOMAML*, UHO).",
    )
    parser.add_argument("--version", action="version", version=f"fewshotseg {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    for add, _ in VERBS.values():
        add(sub)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true",
                             help="show the full traceback of an error instead of a one-line message")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user's mistake prints one message and returns 2; an internal error prints a one-line
    summary and writes the traceback to a crash log (returns 1); `--debug` raises instead.

    Run as the program (`argv` None: the console script, `python -m fewshotseg`), the process is the command's, so
    main manages Python's cyclic garbage collector for it: paused while the parser's imports (torch) create their
    objects, which are then frozen, as everything left at the end is, so that neither the command's collections nor
    the interpreter's last one scan them again (`bench/adapt_latency.py`). Called from Python, it leaves it alone."""
    program = argv is None
    if program:
        gc.disable()
    try:
        args = expand_paths(build_parser().parse_args(argv))
    finally:
        if program:
            gc.freeze()
            gc.enable()
    _, run = VERBS[args.verb]
    try:
        return _run(args, run)
    finally:
        if program:
            gc.freeze()


def _run(args: argparse.Namespace, run) -> int:
    try:
        return run(args) or 0
    except KeyboardInterrupt:
        print(f"fewshotseg {args.verb}: interrupted; run the same command again to resume where it stopped",
              file=sys.stderr)
        return 130
    except Exception as err:
        if getattr(args, "debug", False):
            raise
        if is_user_error(err):
            print(f"fewshotseg {args.verb}: error: {user_message(err)}", file=sys.stderr)
            return 2
        log = write_crash_log(args, err)
        print(f"fewshotseg {args.verb}: internal error: {type(err).__name__}: {_first_line(err)}\n"
              f"  the full traceback is in {log}; rerun with --debug to see it here, and please report it",
              file=sys.stderr)
        return 1


NOT_PATHS = ("verb", "auth", "title", "study", "search", "label", "host", "device", "preset")


def expand_paths(args: argparse.Namespace) -> argparse.Namespace:
    """`~` expanded in every path a flag or argument names, quoted or not (see `fewshotseg.paths`)."""
    from fewshotseg.paths import expand_user

    for name, value in vars(args).items():
        if name not in NOT_PATHS:
            setattr(args, name, expand_user(value))
    return args


def is_user_error(err: BaseException) -> bool:
    """Errors that are the user's to fix: bad settings, files, folders, data or devices; a diverged run."""
    from fewshotseg.errors import UserError

    return isinstance(err, UserError | ValueError | OSError | FloatingPointError)


def user_message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename and err.strerror:  # raised by the OS, not by our own checks
        what = {PermissionError: "check its permissions", IsADirectoryError: "a file is expected here",
                NotADirectoryError: "a folder is expected here",
                FileNotFoundError: "check the path"}.get(type(err), "check the path and the disk")
        return f"{err.filename}: {err.strerror or err}; {what}"
    return str(err) or type(err).__name__


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else "(no message)"


def write_crash_log(args: argparse.Namespace, err: BaseException) -> str:
    """The full traceback, in the command's run folder when it has one, else in a temporary file."""
    import tempfile
    import time
    import traceback
    from pathlib import Path

    text = (f"fewshotseg {args.verb} crashed at {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
            f"command line: {' '.join(sys.argv)}\n\n" + "".join(traceback.format_exception(err)))
    folder = next((Path(v) for k in ("run_dir", "out") if isinstance(v := getattr(args, k, None), str) and v), None)
    if folder is not None and folder.is_dir():
        try:
            path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}.log"
            path.write_text(text)
            return str(path)
        except OSError:
            pass
    fd, path = tempfile.mkstemp(prefix="fewshotseg-crash-", suffix=".log")
    with open(fd, "w") as fh:
        fh.write(text)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
