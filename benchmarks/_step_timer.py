"""Timing a training step the same way in every GPU step-cost script."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_steps(
    step: Callable[[], object], steps: int, device: torch.device
) -> tuple[float, float | None]:
    """The median milliseconds per call of ``step`` over ``steps`` calls (each waited for on a
    GPU), and the peak GPU memory over them in MiB (None on the CPU). Warm up first."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return statistics.median(times), peak
