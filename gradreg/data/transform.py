"""How a dataset's raw inputs become a network's: standardisation with the training split's
statistics (`standardise`, used by the loaders) and the same map kept for later
(`InputTransform`, saved with a trained posterior)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_STATISTICS_AXES: dict[str, int | tuple[int, ...] | None] = {
    "feature": 0,
    "global": None,
    "channel": (0, 2),
}


def standardise(
    x_train: np.ndarray, others: list[np.ndarray], mode: str, n_channels: int = 1
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Centre and scale every split with the train split's statistics.

    `mode` is "feature" (per column), "global" (one mean/std) or "channel" (one per channel
    of rows laid out channel by channel). Returns the standardised splits and the float64
    statistics (mean, scale) in keepdims layout, for `InputTransform`.
    """
    if mode == "channel":
        x_train = x_train.reshape(len(x_train), n_channels, -1)
        others = [x.reshape(len(x), n_channels, -1) for x in others]
    axes = _STATISTICS_AXES[mode]
    mean = x_train.mean(axis=axes, dtype=np.float64, keepdims=True)
    scale = x_train.std(axis=axes, dtype=np.float64, keepdims=True)
    scale[np.ptp(x_train, axis=axes, keepdims=True) == 0] = 1.0  # constant: centre only
    # statistics in float64, the transform in the data's own precision (float32 images)
    data_mean, data_scale = mean.astype(x_train.dtype), scale.astype(x_train.dtype)
    return [(x - data_mean) / data_scale for x in [x_train, *others]], mean, scale


def unit_statistics(mode: str, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean 0 and scale 1 in `standardise`'s layout for ``mode``: the identity transform."""
    shape = _statistics_shape(mode, input_shape)
    return np.zeros(shape, dtype=np.float64), np.ones(shape, dtype=np.float64)


@dataclass(frozen=True)
class InputTransform:
    """How inputs in the dataset's own units (what the loader yields before standardisation)
    become model inputs.

    Built-in sets' units: sklearn's features and digits' pixels 0..16, mnist1d's signal,
    mnist/fashion_mnist/cifar10 pixels in [0, 1]; a file dataset's: the values in the file
    (an image folder's pixels 0..255). ``dtype`` is the precision the loader standardised in
    (float64 for tables, float32 for images read as such), so the map is bit for bit the
    loader's.
    """

    raw_shape: tuple[int, ...]  # per-example shape of raw inputs, e.g. (13,), (8, 8), (3, 32, 32)
    input_shape: tuple[int, ...]  # the model's per-example input shape
    mode: str  # "feature" | "global" | "channel", as `standardise`
    mean: np.ndarray  # float64 statistics, as `standardise` computed them (keepdims layout)
    scale: np.ndarray
    dtype: str = "float64"

    def __post_init__(self) -> None:
        raw_shape = tuple(int(size) for size in self.raw_shape)
        input_shape = tuple(int(size) for size in self.input_shape)
        if math.prod(raw_shape) != math.prod(input_shape):
            raise ValueError(f"raw_shape {raw_shape} and input_shape {input_shape} differ in size")
        if self.mode not in _STATISTICS_AXES:
            raise ValueError(f"unknown mode {self.mode!r}; accepted: {', '.join(_STATISTICS_AXES)}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        expected = _statistics_shape(self.mode, input_shape)
        values = {}
        for name in ("mean", "scale"):
            array = np.array(getattr(self, name), dtype=np.float64)
            if array.shape != expected:
                raise ValueError(f"{name} must have shape {expected} for mode {self.mode!r}")
            array.setflags(write=False)
            values[name] = array
        object.__setattr__(self, "raw_shape", raw_shape)
        object.__setattr__(self, "input_shape", input_shape)
        object.__setattr__(self, "mean", values["mean"])
        object.__setattr__(self, "scale", values["scale"])

    @property
    def accepted_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The per-example shapes `__call__` takes, each once: the raw shape, the model's
        input shape (a grey image with its channel axis) and the flat row of values."""
        flat = (math.prod(self.raw_shape),)
        return tuple(dict.fromkeys([self.raw_shape, self.input_shape, flat]))

    def describe_shapes(self) -> str:
        """The accepted shapes as people write them: ``(N, 8, 8) or (N, 1, 8, 8) or (N, 64)``."""
        return " or ".join(str(("N", *shape)).replace("'", "") for shape in self.accepted_shapes)

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        """(N, *raw_shape), (N, *input_shape) or (N, prod(raw_shape)) -> (N, *input_shape).

        Any real or integer dtype, computed in ``dtype`` as the loader did; float32 out. A
        ValueError names the shapes accepted, and refuses NaN or infinite inputs."""
        x = np.asarray(x)
        n_values = math.prod(self.raw_shape)
        if x.ndim < 2 or tuple(x.shape[1:]) not in self.accepted_shapes:
            raise ValueError(f"expected inputs of shape {self.describe_shapes()}, got {x.shape}")
        if x.dtype.kind not in "biuf":
            raise ValueError(f"inputs must be numbers, got dtype {x.dtype}")
        rows: np.ndarray = np.asarray(x, dtype=self.dtype).reshape(len(x), n_values)
        bad = rows.size - int(np.count_nonzero(np.isfinite(rows)))
        if bad:
            raise ValueError(f"inputs hold {bad} NaN or infinite value(s)")
        if self.mode == "channel":
            rows = rows.reshape(len(x), self.input_shape[0], -1)
        mean, scale = self.mean.astype(self.dtype), self.scale.astype(self.dtype)
        # C order whatever the input's (a DataFrame's values come in Fortran order): the
        # network's matmuls then round alike for the same values
        standard = np.ascontiguousarray(((rows - mean) / scale).astype(np.float32, copy=False))
        return torch.from_numpy(standard).reshape(len(x), *self.input_shape)

    def invert(self, inputs: torch.Tensor | np.ndarray) -> np.ndarray:
        """Model inputs (N, *input_shape) back in raw units, float64 (N, *raw_shape): up to
        float32 rounding, raw inputs that this transform maps to them (an input example)."""
        values = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else inputs
        values = np.asarray(values, dtype=np.float64)
        if values.ndim < 1 or tuple(values.shape[1:]) != self.input_shape:
            shape = str(("N", *self.input_shape)).replace("'", "")
            raise ValueError(f"expected model inputs of shape {shape}, got {values.shape}")
        rows: np.ndarray = values.reshape(len(values), -1)
        if self.mode == "channel":
            rows = rows.reshape(len(values), self.input_shape[0], -1)
        raw: np.ndarray = rows * self.scale + self.mean
        return raw.reshape(len(values), *self.raw_shape)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InputTransform):
            return NotImplemented
        return (
            (self.raw_shape, self.input_shape, self.mode, self.dtype)
            == (other.raw_shape, other.input_shape, other.mode, other.dtype)
            and np.array_equal(self.mean, other.mean)
            and np.array_equal(self.scale, other.scale)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: shapes and statistics as (nested) lists."""
        return {
            "raw_shape": list(self.raw_shape),
            "input_shape": list(self.input_shape),
            "mode": self.mode,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> InputTransform:
        required = ("raw_shape", "input_shape", "mode", "mean", "scale")
        missing = [key for key in required if key not in values]
        if missing:
            raise ValueError(f"an input transform needs {', '.join(missing)}")
        return cls(
            tuple(values["raw_shape"]),
            tuple(values["input_shape"]),
            values["mode"],
            np.asarray(values["mean"], dtype=np.float64),
            np.asarray(values["scale"], dtype=np.float64),
            values.get("dtype", "float64"),
        )


def _statistics_shape(mode: str, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    if mode == "feature":
        return (1, math.prod(input_shape))
    if mode == "global":
        return (1, 1)
    return (1, input_shape[0], 1)
