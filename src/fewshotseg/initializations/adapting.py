"""How an initialization is adapted: U's hyperparameters for a number of support images, and the adaptation method
with its settings. Each comes from a file (`tune`'s update_params.json or method.json) when one is given, else
from the initialization's card, else from the defaults (U: the paper's Table 3); single values given on top
(`--u-*` flags, method settings) replace the ones they name. Every value is validated like any other setting, with
errors naming the file, the card entry or the flag it came from.

`read_update_params` is the one reader of an update-parameters file.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from fewshotseg.adaptation import MethodSpec
from fewshotseg.config import read_mapping, validate
from fewshotseg.errors import SettingError
from fewshotseg.initializations.card import Card
from fewshotseg.initializations.pretrained import init_card
from fewshotseg.meta_learning.update_routine import UpdateParams

U_PRESETS = ("card", "paper")  # where U comes from without a file: the initialization's card, or the paper's Table 3


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


def init_update_params(init: str, shots: int | None, *, preset: str = "card", file: str | Path | None = None,
                       **overrides: Any) -> tuple[UpdateParams, str]:
    """U's hyperparameters for adapting the initialization `init` with `shots` support images, and where they came
    from (see `resolve_card_update_params`)."""
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


def read_update_params(path: str | Path) -> dict[str, Any]:
    """U's values in an update-parameters file (JSON or YAML; under "update_params" as `tune` writes them, or the
    whole mapping), unknown names refused; the callers validate the values (`resolve_update_params`)."""
    path, values = read_mapping(path, "update_params", "update parameters",
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
    own = card.adaptation or {}
    name = own.get("method", "finetune") if method in ("", "card") else method
    if file:
        values, source = read_method_settings(file), str(file)
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


def read_method_settings(path: str | Path) -> dict[str, Any]:
    return read_mapping(path, "settings", "method settings", "`fewshotseg tune --method` (method.json)")[1]
