"""The one device setting: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``."""

from __future__ import annotations

import torch

from .errors import TalkcodecError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise TalkcodecError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TalkcodecError("device 'cuda' asked for, but this torch has no CUDA device (use --device cpu)")
    if device.type not in ("cpu", "cuda"):
        raise TalkcodecError(f"unsupported device {name!r}; use auto, cpu or cuda")
    return device
