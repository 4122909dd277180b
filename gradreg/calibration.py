"""Temperature scaling (Guo et al. 2017): one T > 0 fitted on validation data by NLL.

A predictive's log-probabilities ℓ become ``log_softmax(ℓ / T)``. For a single network ℓ are
its logits up to a constant, so this is the usual softmax(z / T); for a predictive averaged
over weight samples, an ensemble or a Laplace GLM it scales the predictive itself. The NLL is
convex in 1/T, so the fit is a bounded one-dimensional search; argmax (accuracy) is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from gradreg.metrics import classification_metrics

# T is searched in [1/T_RANGE, T_RANGE]; an optimum on the edge is reported as found there.
T_RANGE = 1e3


def _log_probs_array(log_probs: torch.Tensor | np.ndarray, labels: object) -> tuple:
    lp = log_probs.detach().cpu().double().numpy() if torch.is_tensor(log_probs) else log_probs
    lp = np.asarray(lp, dtype=np.float64)
    y = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if lp.ndim != 2 or lp.shape[0] != y.shape[0] or lp.shape[0] == 0:
        raise ValueError(
            f"log_probs must be (N, C) with one label per row, got {lp.shape} and {y.shape}"
        )
    if not np.isfinite(lp).all():
        raise ValueError("log_probs contain NaN or ±inf; temperature scaling needs finite ones")
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


def fit_temperature(log_probs: torch.Tensor | np.ndarray, labels: object) -> float:
    """The T in [1/T_RANGE, T_RANGE] that minimises the NLL of the scaled predictive."""
    lp, y = _log_probs_array(log_probs, labels)
    bound = math.log(T_RANGE)
    found = minimize_scalar(
        lambda u: _nll(lp, y, math.exp(u)),
        bounds=(-bound, bound),
        method="bounded",
        options={"xatol": 1e-7},
    )
    return float(math.exp(found.x))


def scale(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log_softmax(log_probs / temperature)``."""
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return torch.log_softmax(log_probs / temperature, dim=-1)


def temperature_scaled_metrics(
    val: tuple[torch.Tensor, torch.Tensor], others: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    """Fit T on ``val`` = (log_probs, labels); the scaled metrics of val and of each of
    ``others`` (prefix → (log_probs, labels)) under the names ``{prefix}{metric}_ts``, and
    ``val_temperature``."""
    temperature = fit_temperature(*val)
    metrics = {"val_temperature": temperature}
    for prefix, (log_probs, labels) in {"val_": val, **others}.items():
        probs = scale(log_probs, temperature).exp()
        scaled = classification_metrics(probs, labels, prefix)
        metrics.update({f"{name}_ts": value for name, value in scaled.items()})
    return metrics
