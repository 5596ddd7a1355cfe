"""How a command's settings are declared, read and checked; each command's record lives beside the command.

A command's settings are one flat, typed dataclass whose fields are `option`s: a default (the paper's value), help
text in `metadata["help"]` (so the CLI exposes every field as a flag without restating it) and, where a field's
allowed values are its own, its limits (`choices=` taken from the registry they name, bounds). `resolve` reads the
defaults, then a preset of the record's `PRESETS`, then a YAML file, then explicit values, and `validate` checks
every field once; the resolved record is written to the run folder and into every checkpoint.
"""

from __future__ import annotations

import functools
import json
import typing
from dataclasses import asdict, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import pydantic
import yaml

from fewshotseg.errors import SettingError
from fewshotseg.paths import expand_user

T = TypeVar("T")


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A settings field: its default, its help text and any of its own limits (LIMIT_KEYS: `choices=`, bounds,
    `or_zero=True`) or other metadata (`required=True`)."""
    return field(default=default, metadata={"help": help, **metadata})


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise SettingError(f"{path}: cannot read this config file ({err}); pass a YAML file of field: value") from err
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise SettingError(f"{path}: a config file must be a mapping of field: value (see configs/)")
    return values


# Allowed values of a setting: a field's own limits (see `option`), else this table's for its name, shared by every
# command's record (and U's parameters). A setting's type comes from its dataclass; limits add "ge"/"gt"/"le"/"lt"
# bounds, "multiple_of", "choices" (declared on the field, from the registry they name), "pattern" and "or_zero"
# (0 is allowed too, meaning "automatic").
LIMIT_KEYS = ("ge", "gt", "le", "lt", "multiple_of", "or_zero", "choices", "pattern", "describe", "min_length")
ENCODER_STRIDE = 16  # the encoder is cut after its stride-16 stage; a size must give it >= 2x2 features
SIZE = {"ge": 2 * ENCODER_STRIDE, "multiple_of": ENCODER_STRIDE}
UNIT = {"ge": 0, "le": 1}
RATE = {"ge": 0, "lt": 1}
POSITIVE = {"gt": 0}
COUNT = {"ge": 1}
OPTIONAL_COUNT = {"ge": 0}
LIMITS: dict[str, dict[str, Any]] = {
    "bn_momentum": UNIT, "drop_path_rate": RATE, "size": SIZE, "iterations": COUNT, "meta_batch": COUNT,
    "meta_step": POSITIVE, "meta_step_final": POSITIVE, "inner_lr": POSITIVE, "inner_steps": COUNT,
    "inner_batch": COUNT, "train_shots": OPTIONAL_COUNT, "val_shots": COUNT, "dropout": RATE, "aug_rate": UNIT,
    "l2": {"ge": 0}, "seed": {"ge": 0}, "eval_interval": OPTIONAL_COUNT, "eval_tasks": COUNT, "eval_shots": COUNT,
    "checkpoint_interval": COUNT, "threads": OPTIONAL_COUNT,
    "device": {"pattern": r"^(auto|cpu|cuda|cuda:\d+|mps)$", "describe": "auto, cpu, cuda, cuda:N or mps"},
    "epochs": POSITIVE, "batch_size": COUNT, "lr": POSITIVE, "lr_final": POSITIVE, "max_minutes": {"ge": 0},
    "shots": COUNT, "episodes": COUNT, "seeds": COUNT, "num_splits": COUNT, "max_tasks": OPTIONAL_COUNT,
    "fold": {"ge": -1, "le": 3}, "workers": COUNT, "trials": COUNT, "study": {"min_length": 1}, "max_steps": COUNT,
    "patience": COUNT, "holdout": {"gt": 0, "lt": 1}, "val_tasks": OPTIONAL_COUNT, "repeats": COUNT,
    "test_images": COUNT, "early_stopping_from": COUNT, "decay_every": COUNT, "decay_rate": {"gt": 0, "le": 1},
    "ks": COUNT, "steps": COUNT, "threshold": {"gt": 0, "lt": 1}, "train_minutes": POSITIVE,
    "classes": {"ge": 1, "le": 1728}, "pairs": {"ge": 2}, "test_tasks": COUNT, "uho_trials": COUNT,
    "uho_tasks": COUNT, "uho_max_steps": COUNT, "joint_epochs": {"ge": 0}, "probe_l2": {"gt": 0},
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
    """The allowed values of the field `name` of `cls`: its own limits, else LIMITS' for its name."""
    metadata = next((f.metadata for f in fields(cls) if f.name == name), {})
    return {k: v for k, v in metadata.items() if k in LIMIT_KEYS} or LIMITS.get(name, {})


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

    presets = presets_of(cls)
    if preset:
        if preset not in presets:
            raise SettingError(f"unknown preset {preset!r}; choose one of {_names(presets)}")
        take({k: v for k, v in presets[preset].items() if k in known}, f"preset {preset}")
    if file:
        file = expand_user(str(file))
        # `environment` is what a run folder's config.yaml records about the machine: such a file is a valid config
        from_file = {k: v for k, v in load_yaml(file).items() if k != "environment"}
        unknown = sorted(set(from_file) - known - {"preset"})
        if unknown:
            raise SettingError(f"{file}: unknown field(s) {unknown}; see `fewshotseg <command> --help`")
        file_preset = from_file.get("preset")
        if file_preset and not preset:
            if file_preset not in presets:
                raise SettingError(f"{file}: unknown preset {file_preset!r}; choose one of {_names(presets)}")
            take({k: v for k, v in presets[file_preset].items() if k in known}, f"preset {file_preset} (named in {file})")
        take({k: v for k, v in from_file.items() if k != "preset"}, str(file))
    for k, v in overrides.items():
        if v is not None and k in known:
            take({k: v}, f"flag {flag_name(k)}")
    missing = [f.name for f in fields(cls) if f.metadata.get("required") and not values.get(f.name)]
    if missing:
        raise SettingError(f"missing required setting(s): {', '.join(flag_name(m) for m in missing)}")
    return validate(cls, values, sources)


def presets_of(cls: type) -> dict[str, dict[str, Any]]:
    """The named presets a record declares (`PRESETS`, a class variable): name -> field values."""
    return getattr(cls, "PRESETS", {})


def _names(presets: dict[str, Any]) -> str:
    return ", ".join(presets) if presets else "none (this command has no presets)"


def as_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


def read_mapping(path: str | Path, key: str, what: str, writer: str) -> tuple[Path, dict[str, Any]]:
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


