"""Accuracy and calibration metrics for classifiers that output class probabilities.

Every public function takes ``probs`` of shape (N, C) and integer ``labels`` of shape (N,),
as torch tensors or numpy arrays, validates them, computes in float64 numpy and returns
Python floats.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch

PROB_TOLERANCE = 1e-6
ROW_SUM_TOLERANCE = 1e-4

Array: TypeAlias = "torch.Tensor | np.ndarray"


@dataclass(frozen=True, eq=False)
class ReliabilityBins:
    """Per-bin statistics of top-label confidence; bin k covers (lower[k], upper[k]]."""

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    confidence: np.ndarray  # mean confidence per bin, NaN where the bin is empty
    accuracy: np.ndarray  # fraction correct per bin, NaN where the bin is empty

    def __post_init__(self) -> None:
        for name in ("lower", "upper", "count", "confidence", "accuracy"):
            dtype = np.int64 if name == "count" else np.float64
            array = np.array(getattr(self, name), dtype=dtype)
            if array.shape != np.shape(self.lower) or array.ndim != 1:
                raise ValueError(
                    f"ReliabilityBins fields must be 1-D of equal length, "
                    f"got {name} shape {array.shape} vs lower shape {np.shape(self.lower)}"
                )
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    @property
    def n_bins(self) -> int:
        return len(self.count)

    @property
    def ece(self) -> float:
        """Count-weighted mean |accuracy - confidence| over non-empty bins."""
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(np.sum(self.count[filled] * gaps) / self.count.sum())

    def to_dict(self) -> dict[str, list[Any]]:
        """JSON-safe lists; NaN (empty bin) becomes None."""

        def floats(a: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in a]

        return {
            "lower": floats(self.lower),
            "upper": floats(self.upper),
            "count": [int(v) for v in self.count],
            "confidence": floats(self.confidence),
            "accuracy": floats(self.accuracy),
        }

    @classmethod
    def from_dict(cls, data: dict[str, list[Any]]) -> ReliabilityBins:
        """Inverse of `to_dict`."""

        def floats(values: list[Any]) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in values], dtype=float)

        return cls(
            lower=floats(data["lower"]),
            upper=floats(data["upper"]),
            count=np.array(data["count"], dtype=np.int64),
            confidence=floats(data["confidence"]),
            accuracy=floats(data["accuracy"]),
        )


def named_reliability_series(
    series: ReliabilityBins | Mapping[str, ReliabilityBins],
) -> dict[str, ReliabilityBins]:
    """A diagram's series by label: one ReliabilityBins is labelled ``model``."""
    if isinstance(series, ReliabilityBins):
        return {"model": series}
    if not isinstance(series, Mapping):
        raise TypeError(
            f"series must be a ReliabilityBins or a mapping label -> ReliabilityBins, "
            f"got {type(series).__name__}"
        )
    if not series:
        raise ValueError("series mapping is empty; pass at least one label -> ReliabilityBins")
    for label, bins in series.items():
        if not isinstance(bins, ReliabilityBins):
            raise TypeError(
                f"series[{label!r}] must be a ReliabilityBins, got {type(bins).__name__}"
            )
    return {str(label): bins for label, bins in series.items()}


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point():
            # numpy has no bfloat16, so widen in torch before converting
            x = x.to(torch.float64)
        array: np.ndarray = x.numpy()
        return array
    return np.asarray(x)


def _validated(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (probs as float64, labels as int64) or raise describing what is wrong."""
    p = _to_numpy(probs)
    y = _to_numpy(labels)
    if not np.issubdtype(p.dtype, np.floating):
        raise TypeError(f"probs must have a floating-point dtype, got {p.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels must have an integer dtype, got {y.dtype}")
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D with shape (N, C), got shape {p.shape}")
    n, c = p.shape
    if c < 2:
        raise ValueError(f"probs must have C >= 2 classes, got shape {p.shape}")
    if n < 1:
        raise ValueError(f"need at least one example (N >= 1), got probs shape {p.shape}")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D with shape (N,), got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"labels has {y.shape[0]} entries but probs has N={n} rows")
    out_of_range = np.flatnonzero((y < 0) | (y >= c))
    if out_of_range.size:
        i = out_of_range[0]
        raise ValueError(f"labels must lie in [0, {c}), got label {y[i]} at index {i}")

    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        row = np.flatnonzero(~np.isfinite(p).all(axis=1))[0]
        raise ValueError(f"probs must be finite, row {row} is {p[row].tolist()}")
    if p.min() < -PROB_TOLERANCE or p.max() > 1 + PROB_TOLERANCE:
        raise ValueError(
            f"probs must lie in [0, 1] (tolerance {PROB_TOLERANCE:g}), "
            f"got min {p.min():.6g} and max {p.max():.6g}"
        )
    row_error = np.abs(p.sum(axis=1) - 1.0)
    worst = int(np.argmax(row_error))
    if row_error[worst] > ROW_SUM_TOLERANCE:
        raise ValueError(
            f"probs rows must sum to 1 (tolerance {ROW_SUM_TOLERANCE:g}), "
            f"worst row {worst} sums to {p[worst].sum():.6g}"
        )
    return p, y.astype(np.int64)


def _validated_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)):
        raise TypeError(f"n_bins must be a positive int, got {n_bins!r} ({type(n_bins).__name__})")
    if n_bins <= 0:
        raise ValueError(f"n_bins must be a positive int, got {n_bins}")
    return int(n_bins)


def _confidence_and_correct(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predicted = np.argmax(p, axis=1)
    return p[np.arange(len(y)), predicted], (predicted == y).astype(np.float64)


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(p, axis=1) == y))


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    # entries in [-tol, 0) passed validation as rounding noise: they mean probability 0
    true_prob = np.maximum(p[np.arange(len(y)), y], 0.0)
    with np.errstate(divide="ignore"):
        return float(-np.mean(np.log(true_prob)))


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    one_hot = np.zeros_like(p)
    one_hot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - one_hot) ** 2, axis=1)))


def _reliability_bins(p: np.ndarray, y: np.ndarray, n_bins: int) -> ReliabilityBins:
    confidence, correct = _confidence_and_correct(p, y)
    upper = np.arange(1, n_bins + 1, dtype=np.float64) / n_bins
    lower = np.arange(0, n_bins, dtype=np.float64) / n_bins
    # side="left" puts a confidence equal to an edge k/M into bin k, i.e. bins are (lo, hi];
    # the clip catches confidences a hair above 1 that passed the tolerance check
    index = np.minimum(np.searchsorted(upper, confidence, side="left"), n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    return ReliabilityBins(lower, upper, count, mean_confidence, accuracy)


def _adaptive_ece(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    confidence, correct = _confidence_and_correct(p, y)
    order = np.argsort(confidence, kind="stable")
    groups = np.array_split(order, min(n_bins, len(order)))
    gap_sum = sum(abs(correct[g].sum() - confidence[g].sum()) for g in groups)
    return float(gap_sum / len(order))


def accuracy(probs: Array, labels: Array) -> float:
    """Fraction of examples whose argmax class (first index on ties) equals the label."""
    return _accuracy(*_validated(probs, labels))


def nll(probs: Array, labels: Array) -> float:
    """Mean negative log-probability of the true label; inf if any true label has p = 0."""
    return _nll(*_validated(probs, labels))


def brier(probs: Array, labels: Array) -> float:
    """Mean over examples of sum_c (p_c - 1[y = c])^2, in [0, 2]."""
    return _brier(*_validated(probs, labels))


def reliability_bins(probs: Array, labels: Array, n_bins: int = 15) -> ReliabilityBins:
    """Top-label reliability statistics in `n_bins` equal-width bins (lo, hi] (0 goes in bin 1)."""
    n_bins = _validated_n_bins(n_bins)
    return _reliability_bins(*_validated(probs, labels), n_bins)


def ece(probs: Array, labels: Array, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width bins."""
    return reliability_bins(probs, labels, n_bins).ece


def adaptive_ece(probs: Array, labels: Array, n_bins: int = 15) -> float:
    """Top-label ECE with equal-mass bins (stable sort by confidence, np.array_split sizes)."""
    n_bins = _validated_n_bins(n_bins)
    return _adaptive_ece(*_validated(probs, labels), n_bins)


def classification_metrics(probs: Array, labels: Array, prefix: str = "") -> dict[str, float]:
    """`{prefix}accuracy`, `nll`, `ece`, `aece` and `brier` with default 15 bins."""
    p, y = _validated(probs, labels)
    return {
        f"{prefix}accuracy": _accuracy(p, y),
        f"{prefix}nll": _nll(p, y),
        f"{prefix}ece": _reliability_bins(p, y, 15).ece,
        f"{prefix}aece": _adaptive_ece(p, y, 15),
        f"{prefix}brier": _brier(p, y),
    }


def pool_reliability_bins(parts: list[ReliabilityBins]) -> ReliabilityBins:
    """Bins of the union of several evaluations (e.g. seeds) with identical bin edges."""
    if not parts:
        raise ValueError("pool_reliability_bins needs at least one ReliabilityBins")
    first = parts[0]
    if any(p.n_bins != first.n_bins or not np.array_equal(p.upper, first.upper) for p in parts):
        raise ValueError("pool_reliability_bins needs bins with identical edges")
    count = np.sum([p.count for p in parts], axis=0)

    def weighted(field: str) -> np.ndarray:
        sums = np.sum([np.nan_to_num(getattr(p, field)) * p.count for p in parts], axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, sums / np.maximum(count, 1), np.nan)

    return ReliabilityBins(
        first.lower, first.upper, count, weighted("confidence"), weighted("accuracy")
    )


def write_reliability_diagram(
    path: str | os.PathLike[str],
    series: ReliabilityBins | Mapping[str, ReliabilityBins],
    *,
    title: str | None = None,
) -> Path:
    """The reliability-diagram PNG writer, here beside the bins it draws.

    See :func:`gradreg.evaluation.plots.write_reliability_diagram`; imported lazily so that using
    the
    metrics never loads matplotlib.
    """
    from gradreg.evaluation.plots import write_reliability_diagram as write

    return write(path, series, title=title)
