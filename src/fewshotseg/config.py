"""One flat, typed record per command. Defaults are the paper's values; a preset, then a YAML file, then flags
override them; the resolved record is written to the run folder and into every checkpoint.

Fields carry their help text in `metadata["help"]` so the CLI can expose every field as a flag without restating it.
"""

from __future__ import annotations

import functools
import json
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import pydantic
import yaml

from fewshotseg.errors import SettingError
from fewshotseg.initializations.card import Card
from fewshotseg.meta_learning.meta_update import ALGORITHMS
from fewshotseg.meta_learning.update_routine import UpdateParams
from fewshotseg.models.efficientlab import VARIANTS, ModelConfig
from fewshotseg.paths import expand_user

T = TypeVar("T")


def option(default: Any, help: str, **metadata: Any) -> Any:
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class ModelFields:
    """The model fields shared by every command that builds a network."""

    variant: str = option("efficientlab-3", "EfficientLab variant (paper: efficientlab-3; best: efficientlab-6-3)")
    encoder: str = option("tf_efficientnet_b0", "timm encoder name (paper: tf_efficientnet_b0)")
    bn_momentum: float = option(0.01, "BN running-statistics momentum, PyTorch convention (TF 0.99 = 0.01)")
    drop_path_rate: float = option(0.0, "drop-connect rate of the encoder (reference code: 0.2; paper: none)")
    channels_last: bool = option(True, "channels-last memory format (faster on CPU and GPU)")

    def model_config(self, num_classes: int = 2, dropout: float = 0.2) -> ModelConfig:
        return ModelConfig(
            variant=self.variant, encoder=self.encoder, num_classes=num_classes, dropout=dropout,
            bn_momentum=self.bn_momentum, drop_path_rate=self.drop_path_rate, channels_last=self.channels_last,
        )


@dataclass
class MetaTrainConfig(ModelFields):
    data: str = option("", "dataset: a folder in the FSS-1000 layout (see README, Data)", required=True)
    run_dir: str = option("", "run folder: config, log, metrics and checkpoints", required=True)
    splits: str = option("auto", "class split scheme: auto, fss1000, fss1000-all, fp-k, hsnet:DIR, file:PATH")
    fold: int = option(-1, "PASCAL-5i / COCO-20i fold (0-3): train on the other classes; -1 for other datasets")
    size: int = option(224, "square image size in pixels (paper: 224)")
    algorithm: str = option("fomaml-star", "reptile, fomaml (disjoint D^tr/D^val), fomaml-star (with replacement) or "
                                           "r2d2 (the inner loop is the ridge probe, solved in closed form)")
    init: str = option("random", "starting weights: random, imagenet or a checkpoint")
    iterations: int = option(50000, "meta-iterations (paper: 50,000)")
    meta_batch: int = option(5, "tasks per meta-iteration (paper: 5)")
    meta_optimizer: str = option("sgd", "outer optimizer on the pseudo-gradient: sgd (paper) or adam")
    meta_step: float = option(0.1, "initial meta step size epsilon / outer learning rate (paper: 0.1)")
    meta_step_final: float = option(1e-5, "final meta step size, reached by linear decay (paper: 1e-5)")
    inner_lr: float = option(0.005, "inner-loop learning rate (paper: 0.005)")
    inner_steps: int = option(5, "inner steps per task; for FOMAML the last one is on D^val (paper: 5)")
    inner_batch: int = option(8, "inner mini-batch size (paper: 8)")
    inner_optimizer: str = option("sgd", "inner optimizer: sgd (paper) or adam")
    train_shots: int = option(0, "examples per task: Reptile's D, or FOMAML's D^tr+D^val pool (0: 5 for Reptile, "
                                 "10 for FOMAML, the paper's best)")
    val_shots: int = option(5, "FOMAML's |D^val| (the reference's --foml-tail 5)")
    dropout: float = option(0.2, "final-layer dropout while adapting (paper: 0.2)")
    aug_rate: float = option(0.5, "probability that an example is augmented (paper: 0.5)")
    l2: float = option(5e-4, "L2 coefficient lambda on ||theta||^2 over non-BN weights (paper: 5e-4)")
    bn_policy: str = option("paper", "BatchNorm policy: paper, transductive, frozen or support")
    seed: int = option(0, "seed of every random choice")
    eval_interval: int = option(500, "meta-iterations between validation evaluations (0: never)")
    eval_tasks: int = option(100, "validation tasks per evaluation (the reference monitored 100)")
    eval_shots: int = option(5, "support images per validation task")
    checkpoint_interval: int = option(100, "meta-iterations between checkpoints (the reference: 100)")
    threads: int = option(0, "torch threads per process (0: cores / processes)")
    device: str = option("auto", "cpu, cuda or auto")
    # Settings a run folder may be continued with other values of: how long and how often, not what is learnt.
    FREE: ClassVar[tuple[str, ...]] = ("iterations", "eval_interval", "eval_tasks", "checkpoint_interval")

    def update_params(self) -> UpdateParams:
        return UpdateParams(
            lr=self.inner_lr, steps=self.inner_steps, batch_size=self.inner_batch, dropout=self.dropout,
            aug_rate=self.aug_rate, optimizer=self.inner_optimizer, l2=self.l2, bn_policy=self.bn_policy,
        )

    def shots(self) -> int:
        if self.train_shots:
            return self.train_shots
        return 5 if self.algorithm == "reptile" else 10

    def check(self) -> None:
        """Combinations: FOMAML's pool of `shots()` examples must leave D^tr at least one after D^val."""
        if self.algorithm != "reptile" and self.shots() <= self.val_shots:
            raise SettingError(f"setting --val-shots = {self.val_shots} leaves no D^tr examples in a pool of "
                               f"--train-shots = {self.shots()} ({self.algorithm}); allowed: --val-shots < "
                               "--train-shots")


@dataclass
class JointTrainConfig(ModelFields):
    data: str = option("", "dataset folder in the FSS-1000 layout", required=True)
    run_dir: str = option("", "run folder", required=True)
    splits: str = option("auto", "class split scheme (see meta-train)")
    fold: int = option(-1, "PASCAL-5i / COCO-20i fold (0-3): train on the other classes; -1 for other datasets")
    size: int = option(224, "square image size in pixels (paper: 224)")
    init: str = option("random", "starting weights: random, imagenet or a checkpoint")
    epochs: float = option(200, "passes over every training pair (paper: 200)")
    batch_size: int = option(8, "batch size (paper: 8)")
    lr: float = option(0.005, "initial SGD learning rate, decayed linearly (paper: 0.005)")
    lr_final: float = option(5e-7, "final learning rate (the reference: 5e-7)")
    optimizer: str = option("sgd", "sgd (paper) or adam")
    dropout: float = option(0.2, "final-layer dropout (paper: 0.2)")
    aug_rate: float = option(0.5, "probability that an example is augmented")
    l2: float = option(5e-4, "L2 coefficient lambda (paper: 5e-4)")
    seed: int = option(0, "seed of every random choice")
    max_minutes: float = option(0.0, "stop after this wall time, with the lr schedule compressed to fit (0: off)")
    checkpoint_interval: int = option(500, "optimizer steps between checkpoints")
    threads: int = option(0, "torch threads per process (0: cores / processes)")
    device: str = option("auto", "cpu, cuda or auto")
    # Settings a run folder may be continued with other values of (a resumed run keeps its own epochs and budget).
    FREE: ClassVar[tuple[str, ...]] = ("epochs", "max_minutes", "checkpoint_interval")


# Named presets: each says how it departs from the paper and why.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # A few-minute CPU run (tinynet_e, 64 px). With the paper's Table 3 values (tuned for 50,000 SGD
    # meta-iterations) ~400 iterations give an initialization no better than random. Adam on the pseudo-gradient
    # and a 4x inner learning rate with 2 inner steps plus the D^val step learn within minutes on the built-in
    # benchmark. (An inner lr of 0.05 diverged after 75-225 iterations here: one SGD step at that rate rescales the
    # small convolutions that feed BatchNorm by ~10x.) At that inner lr, running statistics (updated at 1 % per
    # step) lag the adapted weights, so predictions normalise the query images with their own batch statistics
    # (the transductive policy); measured here on held-out tasks, 5-shot: 18.6 % mean IoU with the paper's policy,
    # 37.1 % transductive for the same initialization (random init: 1.9 % and 9.3 %).
    "cpu-quick": {
        "encoder": "tinynet_e", "size": 64, "meta_optimizer": "adam", "meta_step": 2e-3, "meta_step_final": 1e-5,
        "inner_lr": 0.02, "inner_steps": 3, "bn_policy": "transductive", "eval_interval": 100, "eval_tasks": 20,
        "checkpoint_interval": 50,
    },
}


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise SettingError(f"{path}: cannot read this config file ({err}); pass a YAML file of field: value") from err
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise SettingError(f"{path}: a config file must be a mapping of field: value (see configs/)")
    return values


# Allowed values of every setting, by field name, for every command's record (and U's parameters). A setting's
# type comes from its dataclass; this table adds ranges: "ge"/"gt"/"le"/"lt" bounds, "multiple_of", "choices",
# and "or_zero" (0 is allowed too, meaning "automatic"). ("Class", "field") entries override a name for one record.
ENCODER_STRIDE = 16  # the encoder is cut after its stride-16 stage; a size must give it >= 2x2 features
SIZE = {"ge": 2 * ENCODER_STRIDE, "multiple_of": ENCODER_STRIDE}
UNIT = {"ge": 0, "le": 1}
RATE = {"ge": 0, "lt": 1}
POSITIVE = {"gt": 0}
COUNT = {"ge": 1}
OPTIONAL_COUNT = {"ge": 0}
OPTIMIZERS = {"choices": ("sgd", "adam")}
LIMITS: dict[str | tuple[str, str], dict[str, Any]] = {
    "variant": {"choices": tuple(VARIANTS)}, "bn_momentum": UNIT, "drop_path_rate": RATE, "size": SIZE,
    "algorithm": {"choices": ALGORITHMS}, "iterations": COUNT, "meta_batch": COUNT,
    "meta_optimizer": OPTIMIZERS, "meta_step": POSITIVE, "meta_step_final": POSITIVE, "inner_lr": POSITIVE,
    "inner_steps": COUNT, "inner_batch": COUNT, "inner_optimizer": OPTIMIZERS, "optimizer": OPTIMIZERS,
    "train_shots": OPTIONAL_COUNT, "val_shots": COUNT, "dropout": RATE, "aug_rate": UNIT, "l2": {"ge": 0},
    "bn_policy": {"choices": ("paper", "transductive", "frozen", "support")}, "seed": {"ge": 0},
    "eval_interval": OPTIONAL_COUNT, "eval_tasks": COUNT, "eval_shots": COUNT, "checkpoint_interval": COUNT,
    "threads": OPTIONAL_COUNT, "device": {"pattern": r"^(auto|cpu|cuda|cuda:\d+|mps)$", "describe": "auto, cpu, cuda, cuda:N or mps"}, "epochs": POSITIVE,
    "batch_size": COUNT, "lr": POSITIVE, "lr_final": POSITIVE, "max_minutes": {"ge": 0}, "shots": COUNT,
    "protocol": {"choices": ("auto", "paper", "hsnet", "per-query")}, "episodes": COUNT, "seeds": COUNT, "split": {"choices": ("train", "val", "test")},
    "num_splits": COUNT, "max_tasks": OPTIONAL_COUNT, "fold": {"ge": -1, "le": 3}, "workers": COUNT,
    "trials": COUNT, "study": {"min_length": 1}, "max_steps": COUNT, "patience": COUNT, "holdout": {"gt": 0, "lt": 1},
    "val_tasks": OPTIONAL_COUNT, "repeats": COUNT, "test_images": COUNT, "early_stopping_from": COUNT,
    "lr_schedule": {"choices": ("fixed", "step")}, "decay_every": COUNT, "decay_rate": {"gt": 0, "le": 1},
    "ks": COUNT, "steps": COUNT, "threshold": {"gt": 0, "lt": 1}, "train_minutes": POSITIVE,
    "classes": {"ge": 1, "le": 1728}, "pairs": {"ge": 2}, "test_tasks": COUNT, "uho_trials": COUNT,
    "uho_tasks": COUNT, "uho_max_steps": COUNT, "joint_epochs": {"ge": 0},
    ("FPKConfig", "max_tasks"): COUNT, ("AdaptConfig", "size"): {**SIZE, "or_zero": True},
    ("EvaluateConfig", "size"): {**SIZE, "or_zero": True}, ("TuneConfig", "size"): {**SIZE, "or_zero": True},
    "u_preset": {"choices": ("card", "paper")}, "stats": {"choices": ("card", "support", "query-batch", "running")},
    "head_init": {"choices": ("init", "probe")}, "probe_l2": {"gt": 0},
    ("TuneConfig", "bn_policy"): {"choices": ("", "paper", "transductive", "frozen", "support")},
    "method": {"choices": ("card", "finetune", "probe", "prototype", "rf")},
    ("QuickstartConfig", "iterations"): OPTIONAL_COUNT, ("QuickstartConfig", "pairs"): {"ge": 6},
}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def describe_limits(limits: dict[str, Any]) -> str:
    """'>= 32 and a multiple of 16', 'one of sgd, adam', ..."""
    if "describe" in limits:
        return limits["describe"]
    if "choices" in limits:
        return "one of " + ", ".join(map(str, limits["choices"]))
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [f"{words[k]} {limits[k]:g}" for k in words if k in limits]
    if "multiple_of" in limits:
        parts.append(f"a multiple of {limits['multiple_of']}")
    if "min_length" in limits:
        parts.append("not empty")
    if "pattern" in limits:
        parts.append(f"matching {limits['pattern']}")
    text = " and ".join(parts) or "any value of its type"
    return f"0 or {text}" if limits.get("or_zero") else text


def _no_bool(value: Any) -> Any:
    """YAML's `yes` is a bool; a count or a rate must not silently become 1 or 1.0."""
    if isinstance(value, bool):
        raise ValueError("a number is needed, not true/false")
    return value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, int | float | str) and not isinstance(value, bool) else value


def _field_type(kind: Any, limits: dict[str, Any]) -> Any:
    """The pydantic type of one field: its Python type with the table's constraints."""
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        counted = pydantic.Field(min_length=1) if limits else pydantic.Field()  # a list of shots or ks is not empty
        return Annotated[list[_field_type(item, limits)], pydantic.BeforeValidator(_as_list), counted]
    if "choices" in limits:
        return Literal[tuple(limits["choices"])]
    constraints = {k: v for k, v in limits.items() if k not in ("or_zero", "choices", "describe")}
    if kind in (int, float):
        if limits.get("or_zero"):
            def check(value: Any, constraints: dict = constraints) -> Any:
                ok = value == 0 or all(_holds(k, v, value) for k, v in constraints.items())
                if not ok:
                    raise ValueError(f"should be {describe_limits(limits)}")
                return value

            return Annotated[kind, pydantic.BeforeValidator(_no_bool), pydantic.AfterValidator(check)]
        return Annotated[kind, pydantic.BeforeValidator(_no_bool), pydantic.Field(**constraints)]
    return Annotated[kind, pydantic.Field(**constraints)] if constraints else kind


def _holds(bound: str, limit: Any, value: Any) -> bool:
    return {"ge": value >= limit, "gt": value > limit, "le": value <= limit, "lt": value < limit,
            "multiple_of": value % limit == 0}.get(bound, True)


def limits_of(cls: type, name: str) -> dict[str, Any]:
    return LIMITS.get((cls.__name__, name), LIMITS.get(name, {}))


@functools.cache
def _schema(cls: type) -> type[pydantic.BaseModel]:
    hints = typing.get_type_hints(cls)
    spec = {f.name: (_field_type(hints[f.name], limits_of(cls, f.name)), ...) for f in fields(cls)}
    config = pydantic.ConfigDict(allow_inf_nan=False, extra="forbid", coerce_numbers_to_str=True)
    return pydantic.create_model(f"{cls.__name__}Settings", __config__=config, **spec)


def validate(cls: type[T], values: dict[str, Any], sources: dict[str, str] | None = None) -> T:
    """A `cls` record from `values` (defaults fill the rest), every field checked for its type and range.

    Types follow the dataclass (ints reject 2.7, floats accept YAML 1.1's "1e-3", bools accept true/false/yes/no
    only, no NaN or infinity anywhere); ranges follow LIMITS; `cls.check()`, when defined, checks combinations.
    """
    sources = sources or {}
    try:
        checked = _schema(cls).model_validate({**_defaults(cls), **values})
    except pydantic.ValidationError as err:
        raise SettingError("\n".join(_explain(cls, e, values, sources) for e in err.errors())) from None
    record = cls(**checked.model_dump())
    check = getattr(record, "check", None)
    if check is not None:
        check()
    return record


def _defaults(cls: type) -> dict[str, Any]:
    from dataclasses import MISSING

    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def _explain(cls: type, error: dict[str, Any], values: dict[str, Any], sources: dict[str, str]) -> str:
    name = str(error["loc"][0]) if error["loc"] else "?"
    value = values.get(name, error.get("input"))
    source = sources.get(name, "default")
    if source.startswith("flag"):
        where = source.removeprefix("flag").strip() or flag_name(name)
    else:
        where = f"{name} in {source}" if source != "default" else name
    if len(error["loc"]) > 1:
        value = f"{value!r} (item {error['loc'][1]})"
    else:
        value = repr(value)
    limits = limits_of(cls, name)
    allowed = describe_limits(limits)
    if error["type"] == "string_pattern_mismatch":
        return f"setting {where} = {value}: not allowed; choose {allowed}"
    message = error["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:]
    return f"setting {where} = {value}: {message}; allowed: {allowed}"


def resolve(cls: type[T], *, preset: str | None = None, file: str | Path | None = None, **overrides: Any) -> T:
    """Defaults, then a preset, then a YAML file, then explicit overrides (None means "not given"); the result is
    validated once (types and ranges, see `validate`), naming the setting, its value and where it came from."""
    known = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def take(new: dict[str, Any], source: str) -> None:
        values.update({k: expand_user(v) for k, v in new.items()})  # `~` in paths, even quoted or from a file
        sources.update(dict.fromkeys(new, source))

    if preset:
        if preset not in PRESETS:
            raise SettingError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        take({k: v for k, v in PRESETS[preset].items() if k in known}, f"preset {preset}")
    if file:
        file = expand_user(str(file))
        # `environment` is what a run folder's config.yaml records about the machine: such a file is a valid config
        from_file = {k: v for k, v in load_yaml(file).items() if k != "environment"}
        unknown = sorted(set(from_file) - known - {"preset"})
        if unknown:
            raise SettingError(f"{file}: unknown field(s) {unknown}; see `fewshotseg <command> --help`")
        file_preset = from_file.get("preset")
        if file_preset and not preset:
            if file_preset not in PRESETS:
                raise SettingError(f"{file}: unknown preset {file_preset!r}; choose one of {', '.join(PRESETS)}")
            take({k: v for k, v in PRESETS[file_preset].items() if k in known}, f"preset {file_preset} (named in {file})")
        take({k: v for k, v in from_file.items() if k != "preset"}, str(file))
    for k, v in overrides.items():
        if v is not None and k in known:
            take({k: v}, f"flag {flag_name(k)}")
    missing = [f.name for f in fields(cls) if f.metadata.get("required") and not values.get(f.name)]
    if missing:
        raise SettingError(f"missing required setting(s): {', '.join(flag_name(m) for m in missing)}")
    return validate(cls, values, sources)


def as_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


def resolve_update_params(file: str | Path | None = None, **overrides: Any) -> UpdateParams:
    """U's hyperparameters: the paper's defaults, then an update-parameters file (JSON or YAML, as `tune` writes
    it), then single `--u-*` flags; validated like every other setting."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if file:
        values = read_update_params(file)
        sources = dict.fromkeys(values, str(file))
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    sources.update({k: f"flag --u-{k.replace('_', '-')}" for k in given})
    return validate(UpdateParams, values, sources)


U_PRESETS = ("card", "paper")


def init_update_params(init: str, shots: int | None, *, preset: str = "card", file: str | Path | None = None,
                       **overrides: Any) -> tuple[UpdateParams, str]:
    """U's hyperparameters for adapting the initialization `init` with `shots` support images, and where they came
    from (see `resolve_card_update_params`)."""
    from fewshotseg.initializations.pretrained import init_card

    return resolve_card_update_params(init_card(init), shots, preset=preset, file=file, **overrides)


def resolve_card_update_params(card: Card, shots: int | None, *, preset: str = "card",
                               file: str | Path | None = None, **overrides: Any) -> tuple[UpdateParams, str]:
    """U's hyperparameters and where they came from: a file (`tune`'s update_params.json), else the paper's
    Table 3 (`preset="paper"`), else the initialization's card for this shot count; then single `--u-*` flags.
    Validated like every other setting."""
    if preset not in U_PRESETS:
        raise SettingError(f"--u-preset {preset!r}: choose one of {', '.join(U_PRESETS)}")
    if file:
        values, source = read_update_params(file), str(file)
    elif preset == "paper":
        values, source = {}, "paper Table 3 (--u-preset paper)"
    else:
        values, source = card.update_params_for(shots)
        source = f"card of {card.name}: {source}"
    given = {k: v for k, v in overrides.items() if v is not None}
    where = source
    if not file and preset != "paper" and getattr(card, "where", ""):  # a card file: name it and the entry
        where = f"{card.where} (update_params[{card.update_params_key(shots)!r}])"
    sources = {**dict.fromkeys(values, where), **{k: f"flag --u-{k.replace('_', '-')}" for k in given}}
    params = validate(UpdateParams, {**values, **given}, sources)
    if given:
        source += " with " + ", ".join(f"{k}={v}" for k, v in given.items())
    return params, source


def _read_mapping(path: str | Path, key: str, what: str, writer: str) -> tuple[Path, dict[str, Any]]:
    """(path, the mapping under `key` of a JSON or YAML file, or the whole file's mapping), with errors naming the
    file, `what` it should hold and which command writes one."""
    path = Path(expand_user(str(path)))
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text) or {}
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        raise SettingError(f"{path}: cannot read these {what} ({err}); pass a file written by {writer} or a "
                           "YAML/JSON mapping") from err
    if isinstance(values, dict) and isinstance(values.get(key), dict):
        values = values[key]
    if not isinstance(values, dict):
        raise SettingError(f"{path}: {what} must be a mapping of name: value (as {writer} writes them)")
    return path, values


def read_update_params(path: str | Path) -> dict[str, Any]:
    path, values = _read_mapping(path, "update_params", "update parameters",
                                 "`fewshotseg tune` (update_params.json)")
    unknown = sorted(set(values) - {f.name for f in fields(UpdateParams)})
    if unknown:
        raise SettingError(f"{path}: unknown update parameter(s) {unknown}; known: "
                           f"{', '.join(f.name for f in fields(UpdateParams))}")
    return values


def resolve_method(card: Card, method: str = "card", *, settings: dict[str, Any] | None = None,
                   file: str | Path | None = None) -> tuple[Any, str]:
    """(MethodSpec, where it came from): the adaptation method `method` ("card": the initialization's own, else
    fine-tuning with U) with its settings from `file` (a `tune --method` result or a YAML/JSON mapping), else the
    card's when the card's method is this one, else the method's defaults; then `settings` replace single values."""
    from fewshotseg.adaptation import MethodSpec

    own = card.adaptation or {}
    name = own.get("method", "finetune") if method in ("", "card") else method
    if file:
        values, source = _read_method_settings(file), str(file)
    elif own.get("method", "finetune") == name and own.get("settings"):
        values, source = dict(own["settings"]), f"card of {card.name}: {own.get('source', 'recorded')}"
    else:
        values, source = {}, f"{name} defaults"
    values.update(settings or {})
    if card.name in ("imagenet", "random") and name in ("probe", "prototype"):
        # their decoder is freshly initialised: its output describes nothing, so the features are the encoder's
        if "decoder" in values.get("features", ()):
            raise SettingError(f"the {name} method on the {card.name} initialization with decoder features: its "
                               "decoder is untrained (random weights), so its features describe nothing; use "
                               "features skip and deep (the encoder's), or a trained initialization")
        values.setdefault("features", ["skip", "deep"])
    try:
        spec = MethodSpec.of(name, values)
    except ValueError as err:
        where = file or (f"the card of {card.name}" if source.startswith("card") else "--method")
        raise SettingError(f"{where}: {err}") from None
    return spec, source


def _read_method_settings(path: str | Path) -> dict[str, Any]:
    return _read_mapping(path, "settings", "method settings", "`fewshotseg tune --method` (method.json)")[1]
