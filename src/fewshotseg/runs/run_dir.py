"""A run folder: `config.yaml`, `log.txt`, `metrics.jsonl` and checkpoints; reports read only these files.

Whole files (configs, checkpoints, initializations, results) are written with `atomic_write`: to a temporary file
in the same folder, fsynced, then renamed over the target, so a process killed at any moment leaves either the old
file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

# --- The files of a run folder ------------------------------------------------------------------------------------
# Each file's name, once: the commands write these names, `claim` checks for them, and reports read them.
CONFIG = "config.yaml"  # the resolved settings (RunDir.write_config)
LOG = "log.txt"
METRICS = "metrics.jsonl"  # one record per logged training iteration
CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"  # the one before the latest (training/checkpoint.py)
MODEL = "model.safetensors"  # a training's exported initialization
INIT = "init.safetensors"  # the network evaluate and tune hand to their workers
RESULTS = "results.json"  # evaluate
EPISODES = "episodes.jsonl"
PREDICTIONS = "predictions.npz"
STUDY = "study.db"  # tune
TRIALS = "trials.json"
UPDATE_PARAMS = "update_params.json"
FP_K_ROWS = "fp_k.jsonl"  # fp-k
FP_K_SUMMARY = "fp_k_summary.json"
WEIGHT_ROWS = "weight_distances.jsonl"  # analyze-weights
WEIGHT_SUMMARY = "weight_summary.json"


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


class RunDir:
    def __init__(self, path: str | Path, *, writer: bool = True):
        self.path = Path(path)
        self.writer = writer  # only rank 0 writes in a distributed run
        if writer:
            self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config: dict[str, Any], name: str = CONFIG) -> None:
        """The resolved settings, plus `environment`: package versions, torch build, command line, git commit."""
        if self.writer:
            from fewshotseg.runs.provenance import environment

            text = yaml.safe_dump({**config, "environment": environment()}, sort_keys=False)
            atomic_write(self.file(name), lambda tmp: Path(tmp).write_text(text))

    def log(self, message: str) -> None:
        if not self.writer:
            return
        tqdm.write(message)
        with self.file(LOG).open("a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def metric(self, record: dict[str, Any], name: str = METRICS) -> None:
        if self.writer:
            with self.file(name).open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def truncate_metrics(self, after_iteration: int, name: str = METRICS) -> None:
        """Drop records written after the checkpoint a resumed run restarts from."""
        path = self.file(name)
        if not self.writer or not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if json.loads(line).get("iteration", 0) <= after_iteration]
        path.write_text("".join(line + "\n" for line in keep))


def scan_jsonl(path: str | Path) -> tuple[list[Any], list[int]]:
    """The records of a JSONL file and the numbers (from 1) of its lines that are not JSON, such as the torn last
    line a process killed mid-write leaves. Blank lines are ignored; a file that does not exist is ([], [])."""
    path = Path(path)
    if not path.exists():
        return [], []
    records: list[Any] = []
    unreadable: list[int] = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            unreadable.append(number)
    return records, unreadable


def read_jsonl(path: str | Path) -> list[Any]:
    """The records of a JSONL file ([] when there is none). A torn last line (a write killed midway) is skipped;
    an unreadable line before it is a ValueError naming the file and the line."""
    path = Path(path)
    records, unreadable = scan_jsonl(path)
    if unreadable and (len(unreadable) > 1 or unreadable[0] != _last_line(path)):
        raise ValueError(f"{path}: line {unreadable[0]} is not valid JSON")
    return records


def _last_line(path: Path) -> int:
    """The number of the last non-blank line of a text file."""
    lines = path.read_text(errors="replace").splitlines()
    return max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)


# --- Who writes a run folder --------------------------------------------------------------------------------------

MARKER = "run.json"  # which command wrote the folder, with which settings
LOCK = ".fewshotseg.lock"
# Files some command writes into a run folder: their presence means the folder holds a run's results.
RESULT_FILES = (CHECKPOINT, PREVIOUS_CHECKPOINT, MODEL, CONFIG, METRICS, RESULTS, EPISODES, PREDICTIONS, INIT, STUDY,
                TRIALS, UPDATE_PARAMS, FP_K_ROWS, FP_K_SUMMARY, WEIGHT_ROWS, WEIGHT_SUMMARY)


@contextmanager
def claim(path: str | Path, command: str, settings: dict[str, Any], *, overwrite: bool = False,
          resume: bool = False) -> Iterator[Path]:
    """Hold a run folder for one writer while the body runs.

    * another process holding the folder's lock is refused (a well-kept lock: filelock's, released by the OS when
      the process dies, so a killed run never leaves a stale lock);
    * a folder holding another run's results (another command, other settings, or result files without a
      `run.json`) is refused unless `overwrite`, which removes those files first; the refusal shows what differs;
    * the same command with the same settings continues the folder (resume, or append new episodes);
    * `resume` on a folder that holds nothing to resume is refused.
    A refused or failed first claim leaves no trace (no folder, no marker).
    """
    from filelock import FileLock, Timeout

    from fewshotseg.errors import RunFolderError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{path}: --run-dir is a file, not a folder; choose a folder")
    if resume and not (path / MARKER).exists() and not (path / CHECKPOINT).exists():
        raise RunFolderError(f"--resume: nothing to resume in {path} (no {CHECKPOINT} and no {MARKER}); "
                             "run without --resume to start a new run there")
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunFolderError(f"{path} is being written by another process (it holds {path / LOCK}); wait for it "
                             "to finish, or choose another --run-dir") from None
    wrote_marker = False
    try:
        wrote_marker = _take_over(path, command, settings, overwrite=overwrite, resume=resume)
        yield path
    except BaseException:
        if wrote_marker and not any((path / f).exists() for f in RESULT_FILES):
            (path / MARKER).unlink(missing_ok=True)  # nothing was written: leave no claim behind
        raise
    finally:
        lock.release()
        if created and not (path / MARKER).exists():
            (path / LOCK).unlink(missing_ok=True)
            try:
                path.rmdir()  # only if empty
            except OSError:
                pass


# Settings that do not change any command's results: a folder may be continued with other values of these.
NEUTRAL = ("run_dir", "threads", "device", "workers", "label")


def claimed(folder: str | Path, command: str, cfg: Any, *, free: tuple[str, ...] = (),
            extra: dict[str, Any] | None = None, overwrite: bool = False,
            resume: bool = False) -> AbstractContextManager[Path]:
    """`claim` a command's run folder for its settings: the fields of `cfg` (its dataclass) but the NEUTRAL ones
    and the command's `free` ones, plus `extra` (values resolved from elsewhere, such as U's per shot count). Every
    command function holds its folder through this while it writes it, so a call from Python and the command line
    take the same lock, write the same `run.json` and refuse or continue a folder alike. Under torchrun only rank
    0 claims (the other ranks write nothing)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return nullcontext(Path(folder))
    settings = {k: v for k, v in asdict(cfg).items() if k not in NEUTRAL + free} | (extra or {})
    return claim(folder, command, settings, overwrite=overwrite, resume=resume)


def _take_over(path: Path, command: str, settings: dict[str, Any], *, overwrite: bool, resume: bool) -> bool:
    """Check who owns `path`; write our marker when there is none. True when this call wrote the marker."""
    from fewshotseg.errors import RunFolderError

    settings = json.loads(json.dumps(settings))  # as it reads back from the file
    marker = path / MARKER
    saved: dict[str, Any] | None = None
    if marker.exists():
        try:
            saved = json.loads(marker.read_text())
        except (OSError, ValueError):
            saved = {"command": "?", "settings": {}}
    results = [f for f in RESULT_FILES if (path / f).exists()]
    if saved is not None and saved.get("command") == command and saved.get("settings") == settings:
        return False  # this very run: continue it
    if saved is None and not results:
        _write_marker(marker, command, settings)
        return True
    if saved is None and resume:  # a run from before markers existed: adopt it (its checkpoint is checked later)
        _write_marker(marker, command, settings)
        return True
    if not overwrite:
        if saved is None:
            what = f"results of another run ({', '.join(results)})"
        elif saved.get("command") != command:
            what = f"the results of `fewshotseg {saved.get('command')}`"
        else:
            what = f"a {command} run with other settings ({settings_diff(saved.get('settings', {}), settings)})"
        advice = "resume with the run's own settings, " if resume else ""
        raise RunFolderError(f"{path} holds {what}; {advice}pass --overwrite to replace them, or choose another "
                             "--run-dir")
    for name in results:
        (path / name).unlink()
    _write_marker(marker, command, settings)
    return True


def _write_marker(marker: Path, command: str, settings: dict[str, Any]) -> None:
    record = {"command": command, "settings": settings, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write(marker, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))


def settings_diff(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """'inner_lr: 0.005 -> 0.9, size: 224 -> 64'"""
    keys = sorted(set(saved) | set(current))
    return ", ".join(f"{k}: {saved.get(k, '(unset)')!r} -> {current.get(k, '(unset)')!r}" for k in keys
                     if saved.get(k) != current.get(k)) or "none"
