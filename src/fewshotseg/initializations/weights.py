"""Initialization files; everywhere an initialization is asked for, accept a file or run folder, `random` or `imagenet`.

* `random`: the encoder's timm initialization and EfficientNet's for the decoder and head.
* `imagenet`: ImageNet encoder weights (timm's hub, or the lite0 package offline) with a fresh decoder and head
  (the paper's "ImageNet-trained encoder" baseline).
* a path: a `model.safetensors` initialization, a `checkpoint.pt`, or a run folder holding either. A network with
  another number of classes (the joint-trained baseline's C+1) gets a fresh two-class head, as the reference did
  with `--do_not_restore_final_layer_weights`.

An initialization file (`model.safetensors`) holds the weights and BN statistics with the model config as JSON in
the safetensors metadata; a training checkpoint (`checkpoint.pt`, see training/checkpoint.py) is read with
`torch.load(weights_only=True)`, never unpickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewshotseg.errors import UserError
from fewshotseg.initializations.card import WEIGHTS_FILE
from fewshotseg.models.efficientlab import EfficientLab, ModelConfig, build_model, reset_head
from fewshotseg.runs.run_dir import CHECKPOINT, MODEL, atomic_write


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, read with weights_only=True; a truncated or foreign file is an error naming it."""
    import pickle
    import zipfile

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as err:
        raise UnreadableWeights(f"{path}: not a readable fewshotseg checkpoint (truncated, corrupt, or not written "
                                f"by fewshotseg; {_short(err)}); pass a model.safetensors or checkpoint.pt that "
                                "fewshotseg wrote. Only plain tensors are read: such a file is never unpickled") from None


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_initialization(path: str | Path, model: nn.Module, extra: dict[str, Any] | None = None) -> None:
    """model.safetensors with the ModelConfig (and any `extra` facts) as metadata."""
    from safetensors.torch import save_file

    metadata = {"format": "fewshotseg-initialization", "model_config": json.dumps(asdict(model.config))}
    metadata.update({k: json.dumps(v) for k, v in (extra or {}).items()})
    atomic_write(path, lambda tmp: save_file(model_state(model), tmp, metadata=metadata))


def read_initialization(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(model config, state dict, extra metadata) of a .safetensors initialization or a training checkpoint."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), "pt") as fh:
                metadata = fh.metadata() or {}
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise UnreadableWeights(f"{path}: not a readable safetensors file (truncated or corrupt; "
                                    f"{_short(err)}); pass an initialization that fewshotseg wrote") from None
        if "model_config" not in metadata:
            raise UnreadableWeights(f"{path}: not a fewshotseg initialization (no model_config in its metadata)")
        try:
            config = ModelConfig(**json.loads(metadata["model_config"]))
            extra = {k: json.loads(v) for k, v in metadata.items() if k not in ("format", "model_config")}
        except (TypeError, ValueError) as err:
            raise UnreadableWeights(f"{path}: its model_config metadata is unreadable ({_short(err)})") from None
        return config, state, extra
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise UnreadableWeights(f"{path}: not a fewshotseg checkpoint (expected keys 'model' and 'model_config')")
    try:
        config = ModelConfig(**state["model_config"])
    except (TypeError, ValueError) as err:
        raise UnreadableWeights(f"{path}: its model_config is unreadable ({_short(err)})") from None
    return config, state["model"], {"iteration": state.get("iteration")}


class UnreadableWeights(UserError, ValueError):
    """An initialization or checkpoint file that cannot be read or does not fit its own model config."""


def _short(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."


def find_initialization(spec: str | Path) -> Path:
    if str(spec) in PACKAGED:
        return packaged_folder(str(spec)) / WEIGHTS_FILE
    path = Path(spec)
    if path.is_dir():
        for name in (MODEL, CHECKPOINT):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: no model.safetensors or checkpoint.pt in this run folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such initialization; pass {', '.join(PACKAGED)} (shipped), random, "
                                "imagenet, a run folder, a folder save_pretrained wrote, or a weights file")
    return path


def load_initialization(spec: str, config: ModelConfig | None, *, num_classes: int = 2) -> tuple[EfficientLab, str]:
    """(model, one-line description). `config` supplies the architecture for `random` and `imagenet`, and the
    dropout and memory format for a file (None: the file's own)."""
    if spec in ("random", "imagenet"):
        if config is None:
            raise ValueError(f"--init {spec} needs a model configuration (variant and encoder)")
        model = build_model(replace(config, num_classes=num_classes), encoder_weights=spec)
        what = "random initialization" if spec == "random" else f"ImageNet-trained {config.encoder} encoder"
        return model, f"{what} ({config.variant})"
    path = find_initialization(spec)
    saved, state, _ = read_initialization(path)
    broken = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise UnreadableWeights(f"{path}: {len(broken)} of its weight tensors hold NaN or infinite values (e.g. "
                                f"{broken[0]}): the initialization itself is broken, whatever U's learning rate. Use "
                                "another one: the run's previous checkpoint (checkpoint.prev.pt), or a run that did not "
                                "diverge")
    if config is not None:
        saved = replace(saved, dropout=config.dropout, channels_last=config.channels_last)
    model = build_model(saved)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        mismatched = str(err).count("size mismatch") + str(err).count("Missing key") + str(err).count("Unexpected key")
        raise UnreadableWeights(f"{path}: its weights do not fit the network its metadata describes ({saved.variant}, "
                                f"{saved.encoder}; {mismatched} kind(s) of mismatch, e.g. {_short(err, 120)}); was it "
                                "written for another encoder? Pass an initialization written by fewshotseg") from None
    what = f"{path} ({saved.variant}, {saved.encoder})"
    if saved.num_classes != num_classes:
        reset_head(model, num_classes)
        what += f"; its {saved.num_classes}-class head replaced by a fresh {num_classes}-class head"
    return model, what


def write_for_workers(spec: str, config: ModelConfig, path: Path, *, seed: int) -> str:
    """Resolve an initialization once and write it to `path` (what worker processes load); returns its description.

    `random` is seeded, so the same seed gives the same random network in every command and every process.
    """
    torch.manual_seed(seed)
    model, described = load_initialization(spec, config)
    save_initialization(path, model, {"described": described})
    return described


# Initializations shipped inside the package: name -> folder under fewshotseg/inits/. `general` is the default of
# adapt, serve and FewShotSegmenter (chosen on the corpus's real-photo validation classes; README, "The general
# initialization"); `general-fomaml` is the FOMAML* meta-learned network that was the default before it, kept for
# comparison and for fine-tuning with U.
PACKAGED = {"general": "general", "general-fomaml": "general-fomaml"}


def packaged_folder(name: str) -> Path:
    folder = Path(__file__).resolve().parent.parent / "inits" / PACKAGED[name]
    if not (folder / "model.safetensors").is_file():
        raise UnreadableWeights(f"the packaged initialization {name!r} is missing from {folder}; reinstall fewshotseg")
    return folder
