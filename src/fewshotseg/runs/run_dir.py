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
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm


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

    def write_config(self, config: dict[str, Any], name: str = "config.yaml") -> None:
        if self.writer:
            self.file(name).write_text(yaml.safe_dump(config, sort_keys=False))

    def log(self, message: str) -> None:
        if not self.writer:
            return
        tqdm.write(message)
        with self.file("log.txt").open("a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def metric(self, record: dict[str, Any], name: str = "metrics.jsonl") -> None:
        if self.writer:
            with self.file(name).open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def truncate_metrics(self, after_iteration: int, name: str = "metrics.jsonl") -> None:
        """Drop records written after the checkpoint a resumed run restarts from."""
        path = self.file(name)
        if not self.writer or not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if json.loads(line).get("iteration", 0) <= after_iteration]
        path.write_text("".join(line + "\n" for line in keep))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
