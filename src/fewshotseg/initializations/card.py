"""An initialization that describes itself: `card.json` and a short `README.md` model card beside the weights.

    <folder>/model.safetensors   weights + BN statistics; the model config in the safetensors metadata
    <folder>/card.json           what the weights are and how to use them (below)
    <folder>/README.md           the same facts for a person (Hugging Face model-card style)

`card.json` holds: the architecture (variant, encoder, ...), the input size, the update parameters U should adapt
it with per shot count (each with where it came from: meta-training's omega, a `tune` run, or the paper), what it
was trained on (algorithm, data, iterations, the exact command) and how well it did (measured mean IoU with its
CI95, on which data and protocol). `adapt`, `evaluate` and `FewShotSegmenter` take their defaults from it.

It also holds the weights' licence (`license`, an SPDX expression, with `license_notes` saying why) and the
limitations measured for them (`limitations`). Fields added after version 1 all have defaults, so older card.json
files still read.

`README.md` is a Hugging Face model card rendered from the card (`Card.model_card`): YAML front matter (`license`,
`library_name`, `pipeline_tag`, `datasets`, `tags`, `metrics`), then intended use, out-of-scope use, known
limitations, training data with every source's licence, training procedure, evaluation with CIs, the licence and how
to cite. Every writer of a card goes through `Card.save` (`save_pretrained`, run folders, package_initialization).

A folder without `card.json` (a run folder written before cards existed) gets a card derived from its weights'
metadata and its `config.yaml`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fewshotseg.errors import UserError
from fewshotseg.runs.run_dir import atomic_write

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
CARD_VERSION = 1


class CardError(UserError, ValueError):
    """A card that cannot be read or does not match its weights."""


@dataclass
class Card:
    """What an initialization says about itself: architecture, input size, how to adapt it (U per shot count, or
    another method), what it was trained on, how well it did, its licence; `card.json` and a model-card README."""

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
    license: str = ""  # SPDX expression of the weights' licence; "" = none chosen (packaging refuses such a card)
    license_notes: str = ""  # why that licence, and what it leaves unsettled
    limitations: list[str] = field(default_factory=list)  # measured failure cases and limits, one sentence each
    # The default adaptation method and its settings: {"method": "finetune" | "probe" | "prototype" | "rf",
    # "settings": {...}, "source": "..."}; empty means fine-tuning with U (the update parameters above).
    adaptation: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------------------------------------- U

    def update_params_key(self, shots: int | None = None) -> str:
        """The update_params entry used for `shots` support images (see `update_params_for`)."""
        tuned = sorted(int(k) for k in self.update_params if k.isdigit())
        key = "default"
        if shots is not None and tuned:
            key = str(min(tuned, key=lambda k: (abs(k - shots), k)))
        if key not in self.update_params:
            key = str(tuned[0]) if tuned else "default"
        return key

    def update_params_for(self, shots: int | None = None) -> tuple[dict[str, Any], str]:
        """(U's fields, where they came from) for `shots` support images: the entry for that shot count, else the
        nearest tuned shot count, else the default."""
        if shots is None and not self.update_params:
            raise CardError(f"card {self.name}: no update parameters")
        key = self.update_params_key(shots)
        if key not in self.update_params:
            raise CardError(f"card {self.name}: no update parameters for {shots} shot(s) and no default")
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
        licence_file = LICENSE_FILE if (folder / LICENSE_FILE).is_file() else None
        atomic_write(folder / "README.md", lambda tmp: Path(tmp).write_text(self.model_card(licence_file)))

    def model_card(self, licence_file: str | None = None) -> str:
        """The Hugging Face model card (README.md) of these weights; `licence_file`: the licence text's file name
        beside it, when there is one."""
        m = self.model
        lines = ["---", yaml.safe_dump(self.front_matter(licence_file), sort_keys=False, allow_unicode=True).strip(),
                 "---", "", f"# {self.name}", "",
                 self.summary or "A fewshotseg initialization for few-shot segmentation.", "",
                 "## How to use", "", "```python", "from fewshotseg import FewShotSegmenter",
                 "", f"seg = FewShotSegmenter.from_pretrained({self.name!r})  # or the folder holding this card",
                 "seg.fit(support_images, support_masks)  # a few labelled examples of the new object",
                 "masks = seg.predict(query_images)       # one mask per image, at its own size", "```", "",
                 f"or `fewshotseg adapt --init {self.name} --support DIR --query DIR --out DIR`.", ""]
        lines += self._intended_use() + self._out_of_scope() + self._limitations() + self._training_data()
        lines += self._training_procedure()
        lines += ["## Architecture", "",
                  f"{m.get('variant')} with the {m.get('encoder')} encoder, {self.size} x {self.size} px input "
                  f"({self.weights.get('bytes', 0) / 1e6:.1f} MB of weights"
                  + (f", SHA-256 `{self.weights['sha256']}`" if self.weights.get("sha256") else "") + ").", "",
                  "## How to adapt it", ""]
        method = self.adaptation.get("method", "finetune")
        if self.adaptation.get("method"):
            settings = _plain(self.adaptation.get("settings") or {})
            lines += [f"Default adaptation method: `{method}`"
                      + (f" ({settings})" if settings != "none" else "")
                      + (f", from {self.adaptation['source']}" if self.adaptation.get("source") else "") + "; "
                      "`adapt`, `serve` and `FewShotSegmenter` use it unless `--method` / `method=` says otherwise.",
                      ""]
        else:
            lines += ["Default adaptation method: `finetune` (the update routine U below).", ""]
        lines += ["The update routine U (`--method finetune`" + (", the default" if method == "finetune" else "")
                  + ") per number of support images (the nearest tuned shot count is used, else the default):", "",
                  "| shots | lr | steps | batch | BatchNorm | source |", "|---|---|---|---|---|---|"]
        for key, values in sorted(self.update_params.items()):
            lines.append(f"| {key} | {_num(values.get('lr'))} | {values.get('steps')} | {values.get('batch_size')} | "
                         f"{values.get('bn_policy')} | {values.get('source', '')} |")
        lines.append("")
        lines += self._evaluation() + self._licence_section(licence_file) + _citation(self)
        return "\n".join(lines).rstrip() + "\n"

    def front_matter(self, licence_file: str | None = None) -> dict[str, Any]:
        """The model card's YAML front matter (Hugging Face model-card metadata)."""
        hub = hub_license(self.license)
        meta: dict[str, Any] = {"license": hub}
        if hub == "other":
            meta["license_name"] = _slug(self.license)
        if licence_file:
            meta["license_link"] = licence_file
        tags = ["few-shot-segmentation", "image-segmentation", "meta-learning"]
        for phase in self._phases():
            for tag in (phase.get("algorithm"), self.model.get("variant"), self.model.get("encoder")):
                if tag and str(tag) not in tags and str(tag).replace("-", "").replace("_", "").isalnum():
                    tags.append(str(tag))
        meta.update({"library_name": "fewshotseg", "pipeline_tag": "image-segmentation",
                     "datasets": self.datasets(), "tags": tags, "metrics": ["mean_iou"]})
        return meta

    def datasets(self) -> list[str]:
        """Names of the data the weights were trained on, earliest first (a corpus built by `make-corpus` is
        `make-corpus-v<version>`: it is built locally, not downloaded from a hub)."""
        names: list[str] = []
        for phase in self._phases():
            name = _dataset_name(phase)
            if name and name not in names:
                names.append(name)
        return names

    # ---------------------------------------------------------------------------------------------- sections

    def _phases(self) -> list[dict[str, Any]]:
        """The training records, earliest first (`training.init_training` holds the run this one continued)."""
        phases, record = [], self.training
        while isinstance(record, dict) and record:
            phases.append(record)
            record = record.get("init_training") or {}
        return phases[::-1]

    def _how(self) -> str:
        """The default adaptation method, in words."""
        method = (self.adaptation or {}).get("method", "finetune")
        return {"finetune": "the update routine U (fine-tuning these weights)",
                "probe": "a linear probe on the frozen network's features",
                "prototype": "foreground and background prototypes of the frozen network's features",
                "rf": "a random-forest pixel classifier"}.get(method, f"the {method} method")

    def _intended_use(self) -> list[str]:
        shots = sorted({str(r.get("shots")) for r in self.metrics if r.get("shots") is not None})
        measured = f" (measured with {', '.join(shots)} support image(s); see Evaluation)" if shots else ""
        return ["## Intended use", "",
                "A starting point for segmenting **one new kind of object** in photographs or drawings from a few "
                f"labelled examples{measured}: {self._how()} learns from the support images and their binary masks, "
                f"then predicts a mask for each new image (run at {self.size} x {self.size} px, "
                "masks returned at the image's own size). This is what `fewshotseg adapt`, `fewshotseg serve` and "
                "`FewShotSegmenter` do with it. Several kinds of object at once (`MultiClassSegmenter`, or `adapt` "
                "with one mask per kind or indexed masks) adapt the same way, one head for all or one segmenter per "
                "kind; the scores below measure one kind at a time. It is also a baseline for research on "
                "meta-learned initializations for few-shot segmentation.", ""]

    def _out_of_scope(self) -> list[str]:
        return ["## Out-of-scope use", "",
                "* Segmenting without labelled examples: the weights are an initialization, not a zero-shot or "
                "promptable segmenter; unadapted they predict no particular object.",
                "* Decisions about people (identification, surveillance), medical or other safety-critical use: "
                "nothing here was measured for them.",
                "* Relying on it for data unlike the training data below (medical scans, satellite or microscope "
                "images, ...) without first measuring it there (`fewshotseg evaluate` on a few labelled tasks of "
                "your own).", ""]

    def _limitations(self) -> list[str]:
        lines = ["## Known limitations", ""]
        lines += [f"* {text}" for text in self.limitations] or ["* No failure cases were measured for these weights."]
        for phase in self._phases():
            commit = str(phase.get("git_commit") or "")
            if commit.endswith("+dirty"):
                lines.append(f"* Reproducibility: {_phase_name(phase)} ran from commit `{commit[:-6]}` with uncommitted "
                             "changes that were not recorded, so its exact code cannot be recovered (see Training "
                             "procedure).")
        lines += [f"* Images are resized to {self.size} x {self.size} px for the network, so detail finer than about "
                  "a pixel at that size is lost in the masks.", ""]
        return lines

    def _training_data(self) -> list[str]:
        lines = ["## Training data", ""]
        phases = self._phases()
        if not phases or not any(p.get("data") for p in phases):
            return lines + ["Not recorded in this card.", ""]
        shown: list[Any] = []
        for phase in reversed(phases):  # this run's data first, then an earlier phase's when it differs
            earlier = phase is not phases[-1]
            corpus, data = phase.get("corpus"), phase.get("data")
            if isinstance(corpus, dict):
                if corpus not in shown:
                    shown.append(corpus)
                    lines += _corpus_lines(corpus, data, earlier)
            elif data and data not in shown:
                shown.append(data)
                lines += [("An earlier phase trained on: " if earlier else "") + f"`{data}` (class split scheme "
                          f"`{phase.get('splits', 'auto')}`). Its licence is not recorded in this card: see the data's "
                          "own terms.", ""]
        return lines

    def _training_procedure(self) -> list[str]:
        lines = ["## Training procedure", ""]
        phases = self._phases()
        if not phases:
            return lines + ["Not recorded in this card.", ""]
        for n, phase in enumerate(phases, 1):
            lead = f"{n}. " if len(phases) > 1 else ""
            lines.append(lead + _describe_phase(phase, continued=n > 1))
            pad = "    " if lead else ""  # 4 spaces: a nested list for CommonMark and Python-Markdown alike
            for key, label in (("command", "Command"), ("run_dir", "Run folder")):
                if phase.get(key):
                    lines.append(f"{pad}* {label}: `{phase[key]}`")
            commit = str(phase.get("git_commit") or "")
            if commit.endswith("+dirty"):
                lines.append(f"{pad}* Code: commit `{commit[:-6]}` **plus uncommitted changes that were not recorded**; "
                             "the exact code cannot be recovered.")
            elif commit:
                lines.append(f"{pad}* Code: commit `{commit}`")
            if phase.get("git_commit_note"):
                lines.append(f"{pad}* {phase['git_commit_note']}")
            lines += [f"{pad}* {_LABELS.get(key, key)}: {_plain(value)}" for key, value in phase.items()
                      if key not in _DESCRIBED]
            lines.append("")
        tuned = sorted(k for k in self.update_params if k.isdigit())
        if tuned:
            shots = " and ".join([", ".join(tuned[:-1]), tuned[-1]] if len(tuned) > 1 else tuned)
            lines += [f"U for {shots} shot(s) was then chosen by update-hyperparameter optimisation "
                      "(`fewshotseg tune`) on validation classes; see How to adapt it.", ""]
        packaging = self.training.get("packaging")
        if isinstance(packaging, dict) and packaging.get("git_commit"):
            text = f"Packaged by `tools/package_initialization.py` at commit `{packaging['git_commit']}`"
            if packaging.get("diff_sha256"):
                text += (f" with uncommitted changes to {len(packaging.get('changed', []))} file(s), recorded beside "
                         f"this card as `{packaging.get('diff_file', 'source.diff')}` (SHA-256 "
                         f"`{packaging['diff_sha256']}`)")
            lines += [text + ".", ""]
        return lines

    def _evaluation(self) -> list[str]:
        lines = ["## Evaluation", ""]
        if not self.metrics:
            return lines + ["Not measured yet.", ""]
        lines += ["Mean IoU (per image, foreground thresholded at 0.5) with its 95 % confidence interval, in "
                  "percentage points; a row without an interval says why.", "",
                  "| data | protocol | shots | mean IoU | CI95 | episodes |", "|---|---|---|---:|---|---:|"]
        for r in self.metrics:
            ci = r.get("ci95")
            if isinstance(r.get("low"), int | float) and isinstance(r.get("high"), int | float):
                shown = f"[{100 * r['low']:.1f}, {100 * r['high']:.1f}]"  # a percentile interval (class bootstrap)
            else:
                shown = f"± {100 * ci:.1f}" if isinstance(ci, int | float) and ci > 0 else _no_ci_reason(r)
            lines.append(f"| {r.get('data')} | {r.get('protocol')} | {r.get('shots')} | {100 * r['mean_iou']:.1f} % | "
                         f"{shown} | {r.get('episodes', '')} |")
        return lines + [""]

    def _licence_section(self, licence_file: str | None) -> list[str]:
        lines = ["## Licence", ""]
        if not self.license:
            lines.append("**No licence has been chosen for these weights**, so by default nobody may redistribute "
                         "them. Whoever publishes them chooses one: `tools/package_initialization.py --license SPDX`.")
        else:
            where = f" (the full terms: [{licence_file}]({licence_file}) beside the weights)" if licence_file else ""
            lines.append(f"The weights: **{self.license}**{where}.")
        if self.license_notes:
            lines += ["", self.license_notes]
        lines += ["", "The fewshotseg code that trains and runs them is MIT-licensed.", ""]
        return lines



# SPDX identifiers -> the Hugging Face hub's licence identifiers (anything else is "other" with a license_name).
HUB_LICENSES = {
    "MIT": "mit", "Apache-2.0": "apache-2.0", "BSD-2-Clause": "bsd-2-clause", "BSD-3-Clause": "bsd-3-clause",
    "GPL-2.0-only": "gpl-2.0", "GPL-2.0-or-later": "gpl-2.0", "GPL-3.0-only": "gpl-3.0", "GPL-3.0-or-later": "gpl-3.0",
    "LGPL-2.1-only": "lgpl-2.1", "LGPL-2.1-or-later": "lgpl-2.1", "LGPL-3.0-only": "lgpl-3.0",
    "LGPL-3.0-or-later": "lgpl-3.0", "AGPL-3.0-only": "agpl-3.0", "AGPL-3.0-or-later": "agpl-3.0",
    "MPL-2.0": "mpl-2.0", "CC0-1.0": "cc0-1.0", "CC-BY-4.0": "cc-by-4.0", "CC-BY-SA-3.0": "cc-by-sa-3.0",
    "CC-BY-SA-4.0": "cc-by-sa-4.0", "CC-BY-NC-4.0": "cc-by-nc-4.0", "OpenRAIL": "openrail",
}
LICENSE_FILE = "LICENSE"


def hub_license(spdx: str) -> str:
    """The hub's licence identifier for an SPDX expression: `unknown` when none is chosen, `other` when the hub has
    no identifier for it."""
    if not spdx:
        return "unknown"
    return HUB_LICENSES.get(spdx.strip(), "other")


ALGORITHMS = {"fomaml-star": "FOMAML\\* (first-order MAML, D^val drawn with replacement)",
              "fomaml": "FOMAML (first-order MAML, disjoint D^tr and D^val)", "reptile": "Reptile",
              "joint": "joint training (all training classes plus background as one multi-class problem)"}
_LABELS = {"adapted_from": "Adapted from", "adapted_with": "U that adapted it"}
_DESCRIBED = {"algorithm", "init", "data", "splits", "iterations", "meta_batch", "meta_optimizer", "meta_step",
              "meta_step_final", "corpus", "command", "git_commit", "git_commit_note", "run_dir", "init_training",
              "packaging", "steps", "epochs"}


def _phase_name(phase: dict[str, Any]) -> str:
    return f"the training run `{phase['run_dir']}`" if phase.get("run_dir") else "the training run"


def _describe_phase(phase: dict[str, Any], *, continued: bool) -> str:
    algorithm = str(phase.get("algorithm") or "")
    what = ALGORITHMS.get(algorithm, f"`{algorithm}`" if algorithm else "training (algorithm not recorded)")
    text = f"**{what[0].upper() + what[1:]}**"
    if phase.get("iterations"):
        text += f", {phase['iterations']} meta-iterations"
        if phase.get("meta_batch"):
            text += f" of {phase['meta_batch']} tasks each"
    if phase.get("steps"):
        text += f", {phase['steps']} optimizer steps"
        if phase.get("epochs"):
            text += f" ({phase['epochs']} epochs)"
    optimizer = phase.get("meta_optimizer")
    if optimizer:
        parts = str(optimizer).split()
        if len(parts) == 1 and phase.get("meta_step") is not None:
            parts += [str(phase["meta_step"]), "->", str(phase.get("meta_step_final"))]
        name = {"adam": "Adam", "sgd": "SGD"}.get(parts[0], parts[0])
        rate = f", meta step {parts[1]} decayed linearly to {parts[3]}" if len(parts) >= 4 else ""
        text += f"; outer optimizer {name} on the pseudo-gradient{rate}"
    init = phase.get("init")
    starts = {"imagenet": "the ImageNet-trained encoder (decoder and head fresh)", "random": "random weights"}
    if init in starts:
        text += f"; from {starts[init]}"
    elif init:
        text += f"; continued from the weights of the phase above (`{init}`)" if continued else f"; from `{init}`"
    if phase.get("data"):
        text += f"; on `{phase['data']}`"
    return text + "."


def _dataset_name(phase: dict[str, Any]) -> str:
    corpus = phase.get("corpus")
    if isinstance(corpus, dict):
        return f"make-corpus-v{corpus.get('corpus_version', 1)}"
    data = str(phase.get("data") or "").rstrip("/")
    return Path(data).name if data else ""


def _sources(corpus: dict[str, Any]) -> list[dict[str, Any]]:
    """A corpus record's sources as dicts (package, version, licences, ...); older cards kept "package version"."""
    out = []
    for source in corpus.get("sources") or []:
        if isinstance(source, dict):
            out.append(source)
        else:
            package, _, version = str(source).partition(" ")
            out.append({"package": package, "version": version})
    return out


def _corpus_lines(corpus: dict[str, Any], data: Any, earlier: bool) -> list[str]:
    spec, splits = corpus.get("spec") or {}, corpus.get("splits") or {}
    lines = [("An earlier phase trained on: the" if earlier else "The")
             + f" corpus of `fewshotseg make-corpus` (version {corpus.get('corpus_version', '?')}, folder `{data}`): "
             f"{splits.get('train', '?')} training, {splits.get('val', '?')} validation and {splits.get('test', '?')} "
             f"test classes of {spec.get('pairs', '?')} image/mask pairs at {spec.get('size', '?')} px (seed "
             f"{spec.get('seed', '?')}), objects with exact alpha masks pasted on photographs. Training used the "
             "training classes; validation classes chose U; the test classes (photographs) were never trained or tuned "
             "on. The corpus is not distributed: `make-corpus` builds it locally from these Debian packages, whose "
             "versions and licences (the `License:` fields of each package's copyright file) it records in its "
             "MANIFEST.json:", ""]
    sources = _sources(corpus)
    used = any(s.get("used_files_licence") for s in sources)
    lines += ["| package | version | role | licences (copyright file) |" + (" licence of the files used |" if used else ""),
              "|---|---|---|---|" + ("---|" if used else "")]
    for s in sources:
        licences = s.get("licences")
        shown = "; ".join(str(x) for x in licences) if licences else "not recorded in this card (see MANIFEST.json)"
        lines.append(f"| {s.get('package')} | {s.get('version', '')} | {s.get('role', '')} | {shown} |"
                     + (f" {s.get('used_files_licence', '')} |" if used else ""))
    return lines + [""]


def _no_ci_reason(row: dict[str, Any]) -> str:
    if row.get("ci_note"):
        return str(row["ci_note"])
    if "UHO" in str(row.get("protocol", "")):
        return "none: the best of the search's trials that chose U, biased upwards; a score, not an estimate"
    return "not recorded for this row"


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _plain(value: Any) -> str:
    """A recorded value for a person: lists and mappings as `key: value` text, not Python reprs."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_plain(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value) or "none"
    return str(value)


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() or c in ".+" else " " for c in text.lower()).split()) or "unnamed"


def _citation(card: Card) -> list[str]:
    version = card.fewshotseg_version or "unknown"
    return ["## How to cite", "",
            "The method (EfficientLab, first-order meta-learning of the initialization, UHO):", "",
            "```bibtex", "@inproceedings{hendryx2020metalearning,",
            "  title     = {Meta-Learning Initializations for Image Segmentation},",
            "  author    = {Hendryx, Sean M. and Leach, Andrew B. and Hein, Paul D. and Morrison, Clayton T.},",
            "  booktitle = {4th Workshop on Meta-Learning at NeurIPS 2020},",
            "  year      = {2020},", "  eprint    = {1912.06290},", "  archivePrefix = {arXiv}", "}", "```", "",
            "and this package and initialization:", "",
            "```bibtex", "@software{fewshotseg,",
            "  title   = {fewshotseg: meta-learned initializations for few-shot image segmentation},",
            f"  version = {{{version}}},",
            f"  note    = {{initialization `{card.name}`"
            + (f", weights SHA-256 {card.weights['sha256']}" if card.weights.get("sha256") else "") + "}",
            "}", "```", ""]


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
