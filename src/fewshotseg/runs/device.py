"""Which device a command runs on."""

from __future__ import annotations

import torch


def choose_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA when available, else the CPU; any other name is passed to torch.device."""
    from fewshotseg.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name}: not a device name ({err}); choose auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch here (torch {torch.__version__}, "
                            "CUDA available: no); use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    return device
