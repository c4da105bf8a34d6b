"""Choosing the device a command runs on."""
from __future__ import annotations

import torch

from robustlab.errors import RobustlabError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RobustlabError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # meta, mps, ...: tensors robustlab cannot count on
        raise RobustlabError(f"--device {name}: robustlab runs on the CPU or a CUDA GPU; use auto, cpu, cuda or "
                             "cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RobustlabError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    return device
