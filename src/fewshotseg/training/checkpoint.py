"""Checkpoints and exported initializations, written atomically and read without unpickling.

* A training checkpoint (`checkpoint.pt`) holds the model state, the outer optimizer, the RNG state, the iteration
  and the resolved config: everything `--resume` needs. It is a dict of tensors and plain values, saved with
  torch.save and read with `torch.load(weights_only=True)`.
* An initialization (`model.safetensors`, written and read by initializations/weights.py) is what every other command
  consumes.

Writes go through `runs.run_dir.atomic_write`, so a process killed at any moment leaves either the old checkpoint
or the new one, never a torn one.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fewshotseg.errors import RunFolderError, UserError
from fewshotseg.initializations.weights import load_checkpoint
from fewshotseg.runs.run_dir import atomic_write


def previous(path: Path) -> Path:
    """Where the checkpoint before the latest one is kept (checkpoint.pt -> checkpoint.prev.pt)."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically, keeping the one before as `checkpoint.prev.pt`: if the latest is ever unreadable (a disk
    that lost the last write), a resumed run falls back to the previous one instead of starting over."""
    path = Path(path)

    def write(tmp: str) -> None:
        torch.save(state, tmp)
        if path.exists():
            os.replace(path, previous(path))  # a kill right here leaves .prev, which resume reads

    atomic_write(path, write)


def resumable_state(path: Path, resume: bool, log: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The checkpoint a run continues from: None for a fresh run; a run folder that already has one needs --resume,
    and --resume needs one. Says what it resumes from; a truncated latest checkpoint falls back to the previous
    one with a warning."""
    path = Path(path)
    older = previous(path)
    if not path.exists() and not older.exists():
        if resume:
            raise RunFolderError(f"--resume: nothing to resume in {path.parent} (no {path.name}); run without "
                                 "--resume to start a new run there")
        return None
    if not resume:
        raise RunFolderError(f"{path.parent} already holds a run ({path.name if path.exists() else older.name}): "
                             "pass --resume to continue it, --overwrite to start over, or choose a new --run-dir")
    say = log or (lambda message: print(message, file=sys.stderr))
    candidates = [p for p in (path, older) if p.exists()]
    for i, candidate in enumerate(candidates):
        try:
            state = load_checkpoint(candidate)
        except UserError as err:
            if i + 1 == len(candidates):
                raise
            say(f"warning: {err}; falling back to the previous checkpoint {candidates[i + 1]}")
            continue
        saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(candidate.stat().st_mtime))
        where = f"iteration {state['iteration']}" if "iteration" in state else f"step {state.get('step')}"
        say(f"resuming from {candidate} ({where}, saved {saved})")
        return state
    raise AssertionError("unreachable")


def check_config_file(path: Path, state: dict[str, Any], fixed: tuple[str, ...]) -> None:
    """A run's config.yaml edited since the run wrote it is refused, showing the difference: a resumed run goes on
    with its checkpoint's settings, so an edit there would be silently ignored. `iterations` counts too, unless a
    time budget has refitted it (config.yaml then holds the latest fit, newer than the checkpoint's)."""
    import yaml

    if not path.is_file():
        return
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise RunFolderError(f"{path}: unreadable ({err}); restore the file the run wrote, or pass --overwrite to "
                             "start a new run in that folder") from None
    if not isinstance(values, dict):
        raise RunFolderError(f"{path}: not a mapping of settings; restore the file the run wrote")
    saved = state["config"]
    keys = list(fixed)
    if state.get("requested_iterations") == saved.get("iterations"):  # never refitted to a time budget
        keys.append("iterations")
    changed = [k for k in keys if k in values and k in saved and values[k] != saved[k]]
    if changed:
        shown = ", ".join(f"{k}: {saved[k]!r} -> {values[k]!r}" for k in changed)
        how = (f" To continue to another number of meta-iterations, pass --iterations {values['iterations']} with "
               "--resume." if "iterations" in changed else "")
        raise RunFolderError(f"{path} was edited since the run wrote it ({shown}); a resumed run goes on with the "
                             "settings of its checkpoint. Restore config.yaml (the values before each arrow), or start "
                             f"a new run with the edited settings: --config {path} --run-dir NEW_FOLDER.{how}")


def check_unchanged(config: Any, saved: dict[str, Any], fixed: tuple[str, ...]) -> None:
    """A resumed run must keep the settings that shape its result; the refusal shows every difference."""
    changed = [k for k in fixed if k in saved and getattr(config, k) != saved[k]]
    if changed:
        shown = ", ".join(f"{k}: {saved[k]!r} -> {getattr(config, k)!r}" for k in changed)
        raise RunFolderError(f"--resume with changed settings ({shown}); resume with the run's own settings "
                             "(its config.yaml), or pass --overwrite to start a new run in that folder")
