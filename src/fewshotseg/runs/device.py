"""Which device a command runs on."""

from __future__ import annotations

import torch


def choose_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA when available, else the CPU; any other name is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
