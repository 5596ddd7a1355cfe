"""Self-describing initializations: weights + card (see initializations/card.py), Hugging Face style folders.

`resolve_pretrained` turns `general`, a folder or file, `imagenet` or `random` into a model and its card;
`save_pretrained` writes a folder `from_pretrained` and `--init` read; `write_run_card` describes a training run's
weights; `record_tuned` and `record_method` put what `tune` found into the card of the initialization it tuned.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from fewshotseg.initializations.card import WEIGHTS_FILE, Card, CardError, check_card, read_card, sha256
from fewshotseg.initializations.weights import (
    PACKAGED,
    find_initialization,
    load_initialization,
    packaged_folder,
    read_initialization,
    save_initialization,
)
from fewshotseg.models.efficientlab import EfficientLab, ModelConfig
from fewshotseg.runs.run_dir import CONFIG, METRICS, read_jsonl

T = TypeVar("T")

U_FROM_META_TRAIN = {"inner_lr": "lr", "inner_steps": "steps", "inner_batch": "batch_size", "dropout": "dropout",
                     "aug_rate": "aug_rate", "inner_optimizer": "optimizer", "l2": "l2", "bn_policy": "bn_policy"}


def card_for(path: Path, config: ModelConfig, extra: dict[str, Any]) -> Card:
    """The card beside an initialization file, checked against the weights; or one derived from the weights'
    metadata and the run folder's config.yaml when there is no card (run folders written before cards)."""
    folder = path.parent
    card = read_card(folder)
    if card is not None:
        check_card_values(card, folder / "card.json")
        card.where = str(folder / "card.json")  # for messages about its values (not saved)
        check_card(card, asdict(config), extra, folder / "card.json")
        return card
    run_config: dict[str, Any] = {}
    if (folder / CONFIG).is_file():
        import yaml

        try:
            run_config = yaml.safe_load((folder / CONFIG).read_text()) or {}
        except (OSError, yaml.YAMLError):
            run_config = {}
    size = int(extra.get("size") or run_config.get("size") or 224)
    if "inner_lr" in run_config:
        values = {u: run_config[m] for m, u in U_FROM_META_TRAIN.items() if m in run_config}
        source = f"meta-training's omega ({folder / 'config.yaml'})"
    else:
        values, source = {}, "paper Table 3 (this initialization records no update parameters of its own)"
    training = {k: v for k, v in extra.items() if k in ("algorithm", "iterations", "data", "steps", "epochs")}
    return Card(name=folder.name or path.stem, model=asdict(config), size=size,  # a file in the current folder
                update_params={"default": {**values, "source": source}}, training=training,
                summary=f"Initialization read from {path} (no card.json; derived from its metadata).")


def check_card_values(card: Card, where: Path) -> None:
    """The values of a card that commands use (input size, U's settings per shot count), checked as settings are,
    with errors naming the card file: a hand-edited card fails here, not deep inside a command. (U's values are
    checked, naming the same file, where they are resolved: `adapting.resolve_card_update_params`.)"""
    size = card.size
    if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 16:
        raise CardError(f"{where}: size {size!r}: the input size the weights were trained at must be a whole number "
                        "of pixels, at least 32 and a multiple of 16; correct it in the card")
    if not isinstance(card.update_params, dict) or not card.update_params:
        raise CardError(f"{where}: update_params must map \"default\" or a shot count to U's settings")
    for key, entry in card.update_params.items():
        if not isinstance(key, str) or not (key == "default" or key.isdigit()) or not isinstance(entry, dict):
            raise CardError(f"{where}: update_params entry {key!r}: keys are \"default\" or a shot count, each "
                            "holding a mapping of U's settings")


def resolve_pretrained(spec: str, *, model_config: ModelConfig | None = None,
                       size: int = 0) -> tuple[EfficientLab, Card, str]:
    """(two-class model, card, one-line description) of `general`, a folder or file, `imagenet` or `random`."""
    if spec in ("random", "imagenet"):
        config = model_config or ModelConfig(encoder="tf_efficientnet_lite0")
        model, described = load_initialization(spec, config)
        card = Card(name=spec, model=asdict(model.config), size=size or 224,
                    update_params={"default": {"source": "paper Table 3 (no meta-learned update parameters)"}},
                    summary=described)
        return model, card, described
    path = find_initialization(packaged_folder(spec) if spec in PACKAGED else spec)
    config, state, extra = read_initialization(path)
    card = card_for(path, config, extra)
    if size and size != card.size:
        card.size = size
    if model_config is not None:
        config = replace(config, dropout=model_config.dropout, channels_last=model_config.channels_last)
    model, described = load_initialization(str(path), config)
    if spec in PACKAGED:
        described = f"the packaged {spec!r} initialization ({config.variant}, {config.encoder}, {card.size} px)"
    return model, card, described


def save_pretrained(folder: str | Path, model: nn.Module, card: Card) -> Path:
    """`model.safetensors` + `card.json` + `README.md` in `folder` (what `from_pretrained` and `--init` read)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    save_initialization(weights, model, {"size": card.size, "name": card.name})
    card.model = asdict(model.config)
    card.weights = {"file": WEIGHTS_FILE, "sha256": sha256(weights), "bytes": weights.stat().st_size}
    if not card.fewshotseg_version:
        from importlib.metadata import PackageNotFoundError, version

        try:
            card.fewshotseg_version = version("fewshotseg")
        except PackageNotFoundError:
            card.fewshotseg_version = "unknown"
    card.save(folder)
    return folder


def init_card(spec: str) -> Card:
    """The card of an initialization (`general`, a folder or file); a minimal one for `random` / `imagenet`."""
    if spec in ("random", "imagenet"):
        return Card(name=spec, model={}, size=0,
                    update_params={"default": {"source": "paper Table 3 (no meta-learned update parameters)"}})
    path = find_initialization(spec)
    config, _, extra = read_initialization(path)
    return card_for(path, config, extra)


def card_size(spec: str) -> int:
    """The input size an initialization was trained at (its card, else its metadata); 0 when it has none."""
    return int(init_card(spec).size)


ARCHITECTURE = ("variant", "encoder")  # what an initialization's weights fix; flags cannot change them


def init_architecture(spec: str) -> tuple[dict[str, Any], int, str] | None:
    """({variant, encoder}, input size, the file that records them) of an initialization that carries its own
    architecture (`general`, a folder, a run folder, a weights file); None for `random` and `imagenet`, which are
    built from the settings."""
    if not spec or spec in ("random", "imagenet"):
        return None
    path = find_initialization(spec)
    config, _, extra = read_initialization(path)
    card = card_for(path, config, extra)
    where = path.parent / "card.json" if (path.parent / "card.json").is_file() else path
    return {k: getattr(config, k) for k in ARCHITECTURE}, int(card.size), str(where)


def adopt_init_architecture(cfg: T) -> T:
    """A command's config (`init`, `variant`, `encoder`, ...) with the variant and encoder of its initialization when
    that carries its own: its weights fix them, so what a run records (config.yaml, run.json, results.json) is what
    runs, whether the command is called from Python or the command line (which also refuses a given --variant or
    --encoder that disagrees)."""
    own = init_architecture(cfg.init)  # type: ignore[attr-defined]
    return cfg if own is None else replace(cfg, **own[0])  # type: ignore[type-var]


def write_run_card(folder: str | Path, model: nn.Module, *, size: int, update_params: dict[str, Any], source: str,
                   training: dict[str, Any], summary: str) -> Card:
    """card.json + README.md beside a run's `model.safetensors`: meta-training's omega as the default U, what it
    was trained on (and the corpus MANIFEST's summary when the data has one), and the last validation score of
    `metrics.jsonl`."""
    from fewshotseg.runs.provenance import environment

    folder = Path(folder)
    data = Path(str(training.get("data", "")))
    if (data / "MANIFEST.json").is_file():
        try:
            manifest = json.loads((data / "MANIFEST.json").read_text())
            training["corpus"] = {k: manifest.get(k) for k in ("corpus_version", "splits", "spec")}
            training["corpus"]["sources"] = [{k: s.get(k) for k in ("package", "version", "role", "licences")}
                                             for s in manifest.get("sources", [])]  # the model card lists licences
        except (OSError, ValueError, KeyError, TypeError):
            pass
    env = environment()
    training.setdefault("command", shlex.join(env["command"]))  # quoted: a path with spaces stays one argument
    training.setdefault("git_commit", env["git_commit"])
    metrics = []
    rows = [r for r in read_jsonl(folder / METRICS) if "val_miou" in r] if (folder / METRICS).is_file() else []
    if rows:
        last = rows[-1]
        metrics.append({"data": f"{training.get('data')} (validation classes)", "protocol": "paper, 5-shot",
                        "shots": 5, "mean_iou": last["val_miou"], "episodes": last.get("val_tasks"),
                        "iteration": last.get("iteration")})
        if last.get("val_ci95") is not None:  # no made-up 0: a row without its CI says so in the model card
            metrics[-1]["ci95"] = last["val_ci95"]
    weights = find_initialization(folder)  # model.safetensors, or the checkpoint of a run still going
    card = Card(name=folder.name, model=asdict(model.config), size=size,
                update_params={"default": {**update_params, "source": source}}, summary=summary,
                training=training, metrics=metrics,
                weights={"file": weights.name, "sha256": sha256(weights), "bytes": weights.stat().st_size})
    card.save(folder)
    return card


def record_method(spec: str, method: dict[str, Any], source: str, metric: dict[str, Any]) -> Path | None:
    """Make a tuned adaptation method (and its settings) the default of the initialization's card; the replaced
    default goes to the card's history. None for `random`, `imagenet` and packaged initializations."""
    if spec in ("random", "imagenet") or spec in PACKAGED:
        return None
    path = find_initialization(spec)
    config, _, extra = read_initialization(path)
    card = card_for(path, config, extra)
    if card.adaptation:
        card.history.append({"adaptation": card.adaptation})
    card.adaptation = {**method, "source": source}
    card.metrics = [m for m in card.metrics if not (m.get("protocol") == metric.get("protocol")
                                                    and m.get("shots") == metric.get("shots"))] + [metric]
    card.save(path.parent)
    return path.parent


def record_tuned(spec: str, shots: int, values: dict[str, Any], source: str, metric: dict[str, Any]) -> Path | None:
    """Put a `tune` result into the card of the initialization it was tuned for (the replaced entry goes to the
    card's history); returns the card's folder, or None for `random`, `imagenet` and packaged initializations,
    whose cards are not changed."""
    if spec in ("random", "imagenet") or spec in PACKAGED:
        return None
    path = find_initialization(spec)
    config, _, extra = read_initialization(path)
    card = card_for(path, config, extra)
    if not card.weights and path.name == WEIGHTS_FILE:
        card.weights = {"file": WEIGHTS_FILE, "sha256": sha256(path), "bytes": path.stat().st_size}
    card.set_update_params(shots, values, source)
    card.metrics = [m for m in card.metrics if not (m.get("protocol") == metric.get("protocol")
                                                    and m.get("shots") == metric.get("shots"))] + [metric]
    card.save(path.parent)
    return path.parent
