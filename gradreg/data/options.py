"""A dataset option's value checked: a whole count or a finite number, refused with an error
that names the option (the generators' sizes and seeds, the split seed)."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np


def check_int(option: str, value: Any, minimum: int) -> int:
    """``value`` as an int, if it is one (not a bool) and at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{option} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{option} must be >= {minimum}, got {value}")
    return int(value)


def check_float(option: str, value: Any, *, positive: bool) -> float:
    """``value`` as a float, if it is a finite real number >= 0 (> 0 when ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{option} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{option} must be finite and {bound}, got {number}")
    return number
