"""An initialization that describes itself: `card.json` and a short `README.md` model card beside the weights.

    <folder>/model.safetensors   weights + BN statistics; the model config in the safetensors metadata
    <folder>/card.json           what the weights are and how to use them (below)
    <folder>/README.md           the same facts for a person (Hugging Face model-card style)

`card.json` holds: the architecture (variant, encoder, ...), the input size, the update parameters U should adapt
it with per shot count (each with where it came from: meta-training's omega, a `tune` run, or the paper), what it
was trained on (algorithm, data, iterations, the exact command) and how well it did (measured mean IoU with its
CI95, on which data and protocol). `adapt`, `evaluate` and `FewShotSegmenter` take their defaults from it.

A folder without `card.json` (a run folder written before cards existed) gets a card derived from its weights'
metadata and its `config.yaml`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fewshotseg.errors import UserError
from fewshotseg.runs.run_dir import atomic_write

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
CARD_VERSION = 1


class CardError(UserError, ValueError):
    """A card that cannot be read or does not match its weights."""


@dataclass
class Card:
    name: str
    model: dict[str, Any]  # ModelConfig fields
    size: int  # square input size the weights were trained at
    update_params: dict[str, dict[str, Any]]  # "default" / "<shots>" -> U's fields + "source"
    summary: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, Any] = field(default_factory=dict)  # file, sha256, bytes
    fewshotseg_version: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)  # replaced update parameters, newest last
    # The default adaptation method and its settings: {"method": "finetune" | "probe" | "prototype" | "rf",
    # "settings": {...}, "source": "..."}; empty means fine-tuning with U (the update parameters above).
    adaptation: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------------------------------------- U

    def update_params_for(self, shots: int | None = None) -> tuple[dict[str, Any], str]:
        """(U's fields, where they came from) for `shots` support images: the entry for that shot count, else the
        nearest tuned shot count, else the default."""
        tuned = sorted(int(k) for k in self.update_params if k.isdigit())
        key = "default"
        if shots is not None and tuned:
            key = str(min(tuned, key=lambda k: (abs(k - shots), k)))
        elif shots is None and not tuned and "default" not in self.update_params:
            raise CardError(f"card {self.name}: no update parameters")
        if key not in self.update_params:
            key = str(tuned[0]) if tuned else "default"
        values = dict(self.update_params[key])
        source = values.pop("source", "unknown")
        label = f"{source}" + (f" (tuned for {key}-shot)" if key.isdigit() else "")
        return values, label

    def set_update_params(self, shots: int | str, values: dict[str, Any], source: str) -> None:
        key = str(shots)
        if key in self.update_params:
            self.history.append({"shots": key, **self.update_params[key]})
        self.update_params[key] = {**values, "source": source}

    # ---------------------------------------------------------------------------------------------- I/O

    def to_json(self) -> dict[str, Any]:
        return {"format": "fewshotseg-card", "card_version": CARD_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, values: dict[str, Any], where: str) -> Card:
        if values.get("format") != "fewshotseg-card":
            raise CardError(f"{where}: not a fewshotseg card (no \"format\": \"fewshotseg-card\")")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in values.items() if k in known})
        except TypeError as err:
            raise CardError(f"{where}: incomplete card ({err})") from None

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        atomic_write(folder / CARD_FILE, lambda tmp: Path(tmp).write_text(json.dumps(self.to_json(), indent=1) + "\n"))
        atomic_write(folder / "README.md", lambda tmp: Path(tmp).write_text(self.model_card()))

    def model_card(self) -> str:
        m = self.model
        lines = [
            "---", "library_name: fewshotseg", "tags: [few-shot-segmentation, image-segmentation, meta-learning]",
            "pipeline_tag: image-segmentation", "---", "",
            f"# {self.name}", "", self.summary or "A fewshotseg initialization for few-shot segmentation.", "",
            "## Use", "", "```python", "from fewshotseg import FewShotSegmenter",
            "", f"seg = FewShotSegmenter.from_pretrained({self.name!r})  # or the folder holding this card",
            "seg.fit(support_images, support_masks)  # a few labelled examples of the new object",
            "masks = seg.predict(query_images)       # one mask per image, at its own size", "```", "",
            f"or `fewshotseg adapt --init {self.name} --support DIR --query DIR --out DIR`.", "",
            "## Architecture", "",
            f"{m.get('variant')} with the {m.get('encoder')} encoder, {self.size} x {self.size} px input "
            f"({self.weights.get('bytes', 0) / 1e6:.1f} MB of weights).", "",
            "## How to adapt it (U)", "", "| shots | lr | steps | batch | BatchNorm | source |", "|---|---|---|---|---|---|",
        ]
        for key, values in sorted(self.update_params.items()):
            lines.append(f"| {key} | {values.get('lr')} | {values.get('steps')} | {values.get('batch_size')} | "
                         f"{values.get('bn_policy')} | {values.get('source', '')} |")
        lines += ["", "## Training", ""]
        lines += [f"* {k}: {v}" for k, v in self.training.items()] or ["(not recorded)"]
        lines += ["", "## Results", ""]
        if self.metrics:
            lines += ["| data | protocol | shots | mean IoU | CI95 | episodes |", "|---|---|---|---|---|---|"]
            lines += [f"| {r.get('data')} | {r.get('protocol')} | {r.get('shots')} | {100 * r['mean_iou']:.1f} % | "
                      f"± {100 * r.get('ci95', 0):.1f} | {r.get('episodes', '')} |" for r in self.metrics]
        else:
            lines.append("Not measured yet.")
        return "\n".join(lines) + "\n"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_card(folder: str | Path) -> Card | None:
    """The folder's card, or None when it has none."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CardError(f"{path}: unreadable card ({err}); delete it to fall back on the run's config") from None
    if not isinstance(values, dict):
        raise CardError(f"{path}: a card must be a JSON object")
    return Card.from_json(values, str(path))


def check_card(card: Card, weights_config: dict[str, Any], weights_extra: dict[str, Any], where: Path) -> None:
    """A card must describe the weights beside it: same encoder, variant and (when recorded) input size."""
    for key in ("encoder", "variant"):
        if card.model.get(key) != weights_config.get(key):
            raise CardError(f"{where}: the card says {key} {card.model.get(key)!r} but its weights are for "
                            f"{weights_config.get(key)!r}; the card belongs to other weights — rewrite it with "
                            "save_pretrained or copy the matching card.json")
    size = weights_extra.get("size")
    if size and int(size) != int(card.size):
        raise CardError(f"{where}: the card says input size {card.size} px but its weights were trained at {size} px; "
                        "the card belongs to other weights")
