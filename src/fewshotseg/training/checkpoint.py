"""Checkpoints and exported initializations, written atomically and read without unpickling.

* A training checkpoint (`checkpoint.pt`) holds the model state, the outer optimizer, the RNG state, the iteration
  and the resolved config: everything `--resume` needs. It is a dict of tensors and plain values, saved with
  torch.save and read with `torch.load(weights_only=True)`.
* An initialization (`model.safetensors`) is what every other command consumes: the weights and BN statistics,
  with the model config as JSON in the safetensors metadata.

Writes go to a temporary file in the same folder, are fsynced, then renamed over the target, so a process killed
at any moment leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewshotseg.models.efficientlab import ModelConfig


def atomic_write(path: str | Path, write) -> None:
    """Call write(tmp_path) and move the result over `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions a plain open() would
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def resumable_state(path: Path, resume: bool) -> dict[str, Any] | None:
    """The checkpoint a run continues from: None for a fresh run; a run folder that already has one needs --resume."""
    if not path.exists():
        return None
    if not resume:
        raise FileExistsError(f"{path} exists: pass --resume to continue it, or choose a new --run-dir")
    return load_checkpoint(path)


def check_unchanged(config: Any, saved: dict[str, Any], fixed: tuple[str, ...]) -> None:
    """A resumed run must keep the settings that shape its result."""
    changed = [k for k in fixed if k in saved and getattr(config, k) != saved[k]]
    if changed:
        shown = ", ".join(f"{k}: {saved[k]!r} -> {getattr(config, k)!r}" for k in changed)
        raise ValueError(f"--resume with changed settings ({shown}); resume with the run's own config")


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
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as fh:
            metadata = fh.metadata() or {}
        if "model_config" not in metadata:
            raise ValueError(f"{path}: not a fewshotseg initialization (no model_config in its metadata)")
        extra = {k: json.loads(v) for k, v in metadata.items() if k not in ("format", "model_config")}
        return ModelConfig(**json.loads(metadata["model_config"])), load_file(str(path)), extra
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise ValueError(f"{path}: not a fewshotseg checkpoint (expected keys 'model' and 'model_config')")
    return ModelConfig(**state["model_config"]), state["model"], {"iteration": state.get("iteration")}
