"""What produced a run: package versions, the torch build, the command line and the git commit, recorded in every
run folder's config.yaml under `environment`."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("fewshotseg", "torch", "torchvision", "timm", "numpy", "optuna", "safetensors", "pillow")


def git_commit(folder: Path | None = None) -> str | None:
    """The commit of the checkout holding this package (with `+dirty` for uncommitted changes), or None when the
    package is not in a git checkout or git is not installed."""
    folder = folder or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    import torch

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "packages": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_build": {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                        "cuda_available": torch.cuda.is_available()},
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else [],
        "git_commit": git_commit(),
    }
