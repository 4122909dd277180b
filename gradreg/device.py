"""Turn a device name from a config or CLI into a torch.device."""

from __future__ import annotations

import re

import torch

_CUDA_NAME = re.compile(r"cuda(?::(\d+))?")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'."""
    accepted = "'auto', 'cpu', 'cuda' or 'cuda:N'"
    if not isinstance(name, str):
        raise TypeError(f"device must be a string ({accepted}), got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = _CUDA_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"unknown device {name!r}; accepted: {accepted}")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'"
        )
    index = match.group(1)
    if index is not None and int(index) >= torch.cuda.device_count():
        raise ValueError(
            f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return torch.device(name)
