"""The `fewshotseg` command: the only module that knows argparse.

Each verb adds its flags in an `add_<verb>` function and runs in a `run_<verb>` function that turns the flags into
library calls. Heavy imports (torch, timm) happen inside the `run_` functions so that `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys


def add_model_info(sub: argparse._SubParsersAction) -> None:
    from fewshotseg.models.efficientlab import VARIANTS

    p = sub.add_parser("model-info", help="print an EfficientLab variant's parameter counts, channels and strides")
    p.add_argument("--variant", default="efficientlab-3", choices=list(VARIANTS))
    p.add_argument("--encoder", default="tf_efficientnet_b0", help="any timm EfficientNet/MobileNet-family name")
    p.add_argument("--size", type=int, default=224, help="input size used to measure feature shapes")


def run_model_info(args: argparse.Namespace) -> int:
    from fewshotseg.models.efficientlab import ModelConfig, build_model, describe

    model = build_model(ModelConfig(variant=args.variant, encoder=args.encoder))
    print(describe(model, size=args.size))
    return 0


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="decode a dataset once into the memory-mapped cache")
    p.add_argument("data", help="dataset folder (FSS-1000 layout), a PASCAL VOC2012 folder, or fp-k:FSS_DIR,VOC_DIR")
    p.add_argument("--size", type=int, default=224, help="square size images and masks are resized to")
    p.add_argument("--strict", action="store_true", help="stop at the first bad file instead of skipping it")


def run_prepare(args: argparse.Namespace) -> int:
    from fewshotseg.data.cache import prepare

    prepare(args.data, size=args.size, strict=args.strict)
    return 0


def add_check_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-data", help="load a dataset and report classes, pairs, sizes and every problem")
    p.add_argument("data", help="dataset folder (FSS-1000 layout), a PASCAL VOC2012 folder, or fp-k:FSS_DIR,VOC_DIR")
    p.add_argument("--size", type=int, default=224)
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
        help_text = f"{f.metadata.get('help', '')} [default: {default}]"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            parser.add_argument(flag, type=kind, default=None, help=help_text, metavar=f.name.upper())


def config_from_args(cls: type, args: argparse.Namespace):
    from dataclasses import fields

    from fewshotseg.config import resolve

    overrides = {f.name: getattr(args, f.name, None) for f in fields(cls)}
    return resolve(cls, preset=getattr(args, "preset", None), file=getattr(args, "config", None), **overrides)


def add_make_synthetic(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-synthetic", help="generate the built-in benchmark (FSS-1000 layout with its own splits)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", type=int, default=1000, help="number of classes (max 1728)")
    p.add_argument("--pairs", type=int, default=10, help="image/mask pairs per class (FSS-1000: 10; FP-k needs 420)")
    p.add_argument("--size", type=int, default=64, help="image size in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes generating classes in parallel")


def run_make_synthetic(args: argparse.Namespace) -> int:
    from fewshotseg.data.synthetic import SyntheticSpec, make_synthetic

    spec = SyntheticSpec(classes=args.classes, pairs=args.pairs, size=args.size, seed=args.seed)
    splits = make_synthetic(args.out, spec, workers=args.workers)
    print(f"wrote {spec.classes} classes x {spec.pairs} pairs at {spec.size} px to {args.out} "
          f"({', '.join(f'{k} {len(v)}' for k, v in splits.items())} classes)")
    return 0


def add_meta_train(sub: argparse._SubParsersAction) -> None:
    from fewshotseg.config import PRESETS, MetaTrainConfig

    p = sub.add_parser("meta-train", help="meta-learn an initialization with Reptile, FOMAML or FOMAML*",
                       description="Meta-learn an initialization. Settings: defaults (the paper's Table 3), then "
                       "--preset, then --config FILE (YAML), then flags. Run under torchrun to spread each "
                       "meta-batch over processes.")
    p.add_argument("--config", help="YAML file of settings (see configs/)")
    p.add_argument("--preset", choices=list(PRESETS), help="named settings; cpu-quick departs from the paper")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="fit the number of meta-iterations to this wall time (measured on the first 10)")
    add_config_flags(p, MetaTrainConfig)


def run_meta_train(args: argparse.Namespace) -> int:
    from fewshotseg.config import MetaTrainConfig
    from fewshotseg.training.meta_train import meta_train

    cfg = config_from_args(MetaTrainConfig, args)
    meta_train(cfg, resume=args.resume, max_minutes=args.max_minutes)
    return 0


VERBS = {
    "make-synthetic": (add_make_synthetic, run_make_synthetic),
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, run = VERBS[args.verb]
    from fewshotseg.data.dataset import DataError

    try:
        return run(args) or 0
    except (DataError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"fewshotseg {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
