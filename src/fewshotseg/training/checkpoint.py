"""Checkpoints and exported initializations, written atomically and read without unpickling.

* A training checkpoint (`checkpoint.pt`) holds the model state, the outer optimizer, the RNG state, the iteration
  and the resolved config: everything `--resume` needs. It is a dict of tensors and plain values, saved with
  torch.save and read with `torch.load(weights_only=True)`.
* An initialization (`model.safetensors`, written and read by runs/initialization.py) is what every other command
  consumes.

Writes go through `runs.run_dir.atomic_write`, so a process killed at any moment leaves either the old checkpoint
or the new one, never a torn one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fewshotseg.runs.initialization import load_checkpoint
from fewshotseg.runs.run_dir import atomic_write


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


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
