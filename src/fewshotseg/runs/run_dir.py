"""A run folder: `config.yaml`, `log.txt`, `metrics.jsonl` and checkpoints; reports read only these files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm


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
