"""Temperature scaling against a brute-force grid, and what it must leave alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradreg.calibration import (
    T_RANGE,
    fit_temperature,
    scale,
    scaled_nll,
    temperature_scaled_metrics,
)


def overconfident(n: int = 400, classes: int = 5, sharpness: float = 4.0, seed: int = 0):
    """Logits of a model that is right 70% of the time but says so with far more confidence."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    guess = np.where(rng.random(n) < 0.7, labels, rng.integers(0, classes, n))
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), guess] += 3.0
    log_probs = torch.log_softmax(torch.tensor(sharpness * logits), dim=-1)
    return log_probs, torch.tensor(labels)


@pytest.mark.parametrize("sharpness", [0.3, 1.0, 4.0])
def test_the_fitted_temperature_is_the_grid_minimum(sharpness):
    log_probs, labels = overconfident(sharpness=sharpness)
    grid = np.exp(np.linspace(-math.log(T_RANGE), math.log(T_RANGE), 20001))
    nlls = np.array([scaled_nll(log_probs, labels, t) for t in grid])
    best = grid[nlls.argmin()]
    found = fit_temperature(log_probs, labels)
    assert found == pytest.approx(best, rel=2e-3)
    assert scaled_nll(log_probs, labels, found) <= nlls.min() + 1e-9
    if sharpness != 1.0:  # overconfident predictions are softened (T > 1), underconfident sharpened
        assert (found > 1) == (sharpness > 1)


def test_scaling_keeps_the_predicted_class_and_normalises():
    log_probs, labels = overconfident()
    scaled = scale(log_probs, 2.5)
    assert torch.equal(scaled.argmax(1), log_probs.argmax(1))
    torch.testing.assert_close(scaled.exp().sum(1), torch.ones(len(labels), dtype=scaled.dtype))
    assert torch.allclose(scale(log_probs, 1.0), log_probs)


def test_scaled_metrics_are_named_and_fitted_on_validation_only():
    val, test = overconfident(seed=1), overconfident(seed=2)
    metrics = temperature_scaled_metrics(val, {"test_": test})
    assert metrics["val_temperature"] == pytest.approx(fit_temperature(*val))
    expected = {f"{s}_{m}_ts" for s in ("val", "test") for m in ("accuracy", "nll", "ece")}
    assert expected <= set(metrics)
    assert metrics["val_nll_ts"] == pytest.approx(
        scaled_nll(*val, metrics["val_temperature"]), rel=1e-9
    )
    # Fitted on val, the test NLL is not the test optimum: the test set was not looked at.
    assert metrics["test_nll_ts"] >= scaled_nll(*test, fit_temperature(*test)) - 1e-12


def test_bad_inputs_are_named():
    log_probs, labels = overconfident()
    with pytest.raises(ValueError, match="NaN or ±inf"):
        fit_temperature(log_probs.clone().fill_(float("nan")), labels)
    with pytest.raises(ValueError, match=r"must be \(N, C\) with one label per row"):
        fit_temperature(log_probs[:10], labels)
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        scale(log_probs, 0.0)
