"""Temperature scaling (Guo et al. 2017): one T > 0 fitted on validation data by NLL.

A predictive's log-probabilities ℓ become ``log_softmax(ℓ / T)``. For a single network ℓ are
its logits up to a constant, so this is the usual softmax(z / T); for a predictive averaged
over weight samples, an ensemble or a Laplace GLM it scales the predictive itself. The NLL is
convex in 1/T, so the fit is a bounded one-dimensional search over T in
[1/T_RANGE, T_RANGE]; argmax (accuracy) is unchanged.

When T is not fitted. With β = 1/T the NLL's slope tends, as β → ∞ (T → 0), to the mean over
examples of (the row's highest log-probability − the label's), which is never negative. So:

(a) if every validation label has its row's highest log-probability (the validation predictive
    separates the labels, e.g. every example is classified correctly with a margin), the NLL
    never rises as T → 0 and has no finite minimiser: a search stops somewhere the NLL is
    already ~0 in floating point, and the scaled model is confidently wrong on the first test
    error (wine's 27 validation rows, all right: T = 0.026, and a scaled test NLL of 0.55
    against 0.18 raw). This includes rows where the label ties with another class, and every
    row giving all classes the same log-probability (T then does not change the NLL at all),
    whatever the number of examples (one example classified correctly is this case too);
(b) otherwise a minimiser exists, but if the search's optimum lies on the edge of
    [1/T_RANGE, T_RANGE] (within `EDGE_TOLERANCE` in log T) the data push T to a limit rather
    than choose one (towards T → ∞ when the labels fare worse than the uniform predictive).

In both cases T is not fitted: `fit_temperature` returns T = 1 (no scaling, so every ``*_ts``
metric equals its raw counterpart) with ``fitted=False`` and a sentence that says why, which
the metrics record as ``val_temperature_fitted`` = 0 (1 when fitted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from gradreg.evaluation.metrics import classification_metrics
from gradreg.names import TEMPERATURE_METRICS

# T is searched in [1/T_RANGE, T_RANGE].
T_RANGE = 1e3
SEARCH_TOLERANCE = 1e-7  # the bounded search's absolute tolerance on log T
# An optimum this close to an edge, in log T, is on it: the bounded search (Brent's, which
# never evaluates the bounds themselves) ends 2.6e-7 inside an edge when the optimum is there.
EDGE_TOLERANCE = 10 * SEARCH_TOLERANCE


@dataclass(frozen=True)
class TemperatureFit:
    """The temperature to scale by, whether it was fitted, and why not when it was not."""

    temperature: float  # the fitted T, or 1.0 (no scaling) when not fitted
    fitted: bool
    reason: str | None = None  # a sentence beginning "not fitted: ", when not fitted

    def __post_init__(self) -> None:
        if self.fitted == (self.reason is not None):
            raise ValueError("a TemperatureFit has a reason exactly when it was not fitted")
        if not self.fitted and self.temperature != 1.0:
            raise ValueError(f"a temperature that was not fitted is 1, got {self.temperature}")

    def metrics(self) -> dict[str, float]:
        """``val_temperature`` and ``val_temperature_fitted`` (1.0 fitted, 0.0 not)."""
        values = (self.temperature, float(self.fitted))
        return dict(zip(TEMPERATURE_METRICS, values, strict=True))


def _log_probs_array(
    log_probs: torch.Tensor | np.ndarray, labels: object
) -> tuple[np.ndarray, np.ndarray]:
    lp = log_probs.detach().cpu().double().numpy() if torch.is_tensor(log_probs) else log_probs
    lp = np.asarray(lp, dtype=np.float64)
    y = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if lp.ndim != 2 or y.ndim != 1 or lp.shape[0] != y.shape[0] or lp.shape[0] == 0:
        raise ValueError(
            f"log_probs must be (N, C) with one label per row, got {lp.shape} and {y.shape}"
        )
    if not np.isfinite(lp).all():
        raise ValueError("log_probs contain NaN or ±inf; temperature scaling needs finite ones")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= lp.shape[1]:
        raise ValueError(
            f"labels must be integers in [0, {lp.shape[1]}) for {lp.shape[1]} classes, got "
            f"{y.dtype} values in [{y.min()}, {y.max()}]"
        )
    return lp, y.astype(np.int64)


def _nll(lp: np.ndarray, y: np.ndarray, temperature: float) -> float:
    scaled = lp / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(len(y)), y]))


def scaled_nll(log_probs: torch.Tensor | np.ndarray, labels: object, temperature: float) -> float:
    """Mean NLL of ``log_softmax(log_probs / temperature)``."""
    lp, y = _log_probs_array(log_probs, labels)
    return _nll(lp, y, temperature)


def _separated(lp: np.ndarray, y: np.ndarray) -> str | None:
    """Case (a): why the NLL has no finite minimiser as T → 0, or None if it has one."""
    n = len(y)
    top = lp.max(axis=1)
    label = lp[np.arange(n), y]
    if (label < top).any():
        return None
    if (lp == top[:, None]).all():
        return (
            f"not fitted: each of the {n} validation rows gives every class the same "
            "log-probability, so T does not change the NLL"
        )
    tied = int(((lp == top[:, None]).sum(axis=1) > 1).sum())
    if tied == 0:
        examples = "the 1 validation example is" if n == 1 else f"all {n} validation examples are"
        return (
            f"not fitted: {examples} classified correctly with a margin, so the NLL falls "
            "as T -> 0 and has no finite minimiser"
        )
    return (
        f"not fitted: every one of the {n} validation examples' labels has its row's highest "
        f"log-probability ({tied} tied with another class), so the NLL never rises as T -> 0 "
        "and has no finite minimiser"
    )


def fit_temperature(log_probs: torch.Tensor | np.ndarray, labels: object) -> TemperatureFit:
    """The T in [1/T_RANGE, T_RANGE] that minimises the NLL of the scaled predictive, or T = 1
    with the reason when that is ill-posed (the module's cases (a) and (b))."""
    lp, y = _log_probs_array(log_probs, labels)
    separated = _separated(lp, y)
    if separated is not None:
        return TemperatureFit(1.0, fitted=False, reason=separated)
    bound = math.log(T_RANGE)
    found = minimize_scalar(
        lambda u: _nll(lp, y, math.exp(u)),
        bounds=(-bound, bound),
        method="bounded",
        options={"xatol": SEARCH_TOLERANCE},
    )
    u = float(found.x)
    if u + bound <= EDGE_TOLERANCE:
        return TemperatureFit(
            1.0,
            fitted=False,
            reason=f"not fitted: the validation NLL falls all the way down to T = "
            f"{1 / T_RANGE:g}, the search's lower bound, so the {len(y)} validation examples "
            "push T to a limit (0) rather than choose one",
        )
    if bound - u <= EDGE_TOLERANCE:
        return TemperatureFit(
            1.0,
            fitted=False,
            reason=f"not fitted: the validation NLL falls all the way up to T = {T_RANGE:g}, "
            f"the search's upper bound, so the {len(y)} validation examples push T to a limit "
            "(infinity, the uniform predictive) rather than choose one",
        )
    return TemperatureFit(math.exp(u), fitted=True)


def scale(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log_softmax(log_probs / temperature)``."""
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return torch.log_softmax(log_probs / temperature, dim=-1)


def temperature_scaled_metrics(
    val: tuple[torch.Tensor, torch.Tensor],
    others: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    temperature: TemperatureFit | None = None,
) -> dict[str, float]:
    """The scaled metrics of ``val`` = (log_probs, labels) and of each of ``others`` (prefix →
    (log_probs, labels)) under the names ``{prefix}{metric}_ts``, with ``val_temperature`` and
    ``val_temperature_fitted``. ``temperature`` is ``fit_temperature(*val)`` (fitted here when
    not given); where it was not fitted, T = 1 and every ``_ts`` metric equals its raw one."""
    if temperature is None:
        temperature = fit_temperature(*val)
    metrics = temperature.metrics()
    for prefix, (log_probs, labels) in {"val_": val, **others}.items():
        probs = scale(log_probs, temperature.temperature).exp()
        scaled = classification_metrics(probs, labels, prefix)
        metrics.update({f"{name}_ts": value for name, value in scaled.items()})
    return metrics
