"""Temperature scaling against a brute-force grid, what it must leave alone, and when the
validation data do not determine a temperature (T is then not fitted, and says why)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from gradreg.evaluation.calibration import (
    T_RANGE,
    TemperatureFit,
    fit_temperature,
    scale,
    scaled_nll,
    temperature_scaled_metrics,
)
from gradreg.evaluation.metrics import classification_metrics


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
    fit = fit_temperature(log_probs, labels)
    assert fit.fitted and fit.reason is None
    found = fit.temperature
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
    assert metrics["val_temperature"] == pytest.approx(fit_temperature(*val).temperature)
    assert metrics["val_temperature_fitted"] == 1.0
    expected = {f"{s}_{m}_ts" for s in ("val", "test") for m in ("accuracy", "nll", "ece")}
    assert expected <= set(metrics)
    assert metrics["val_nll_ts"] == pytest.approx(
        scaled_nll(*val, metrics["val_temperature"]), rel=1e-9
    )
    # Fitted on val, the test NLL is not the test optimum: the test set was not looked at.
    assert metrics["test_nll_ts"] >= scaled_nll(*test, fit_temperature(*test).temperature) - 1e-12


def test_bad_inputs_are_named():
    log_probs, labels = overconfident()
    with pytest.raises(ValueError, match="NaN or ±inf"):
        fit_temperature(log_probs.clone().fill_(float("nan")), labels)
    with pytest.raises(ValueError, match=r"must be \(N, C\) with one label per row"):
        fit_temperature(log_probs[:10], labels)
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        scale(log_probs, 0.0)
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 5\) for 5 classes"):
        fit_temperature(log_probs, labels + 5)


def separable(n: int = 27, classes: int = 3, seed: int = 0):
    """Log-probabilities of a predictive that classifies every example correctly, with margins
    between 0.5 and 4 nats (the user's 27 validation rows of a noisy wine file)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(scale=0.3, size=(n, classes))
    logits[np.arange(n), labels] = logits.max(1) + rng.uniform(0.5, 4.0, n)
    return torch.log_softmax(torch.tensor(logits), dim=-1), torch.tensor(labels)


def test_a_validation_set_classified_correctly_with_a_margin_is_not_fitted():
    val = separable()
    # A test set of the same kind with one confident error: the first test error an
    # arbitrarily sharpened predictive meets (before, the search ran off towards T -> 0).
    test_lp, test_y = separable(n=36, seed=1)
    test_y = test_y.clone()
    test_y[0] = (test_lp[0].argmax() + 1) % 3
    fit = fit_temperature(*val)
    assert fit == TemperatureFit(
        1.0,
        fitted=False,
        reason="not fitted: all 27 validation examples are classified correctly with a margin, "
        "so the NLL falls as T -> 0 and has no finite minimiser",
    )
    # It really has no minimiser: the NLL keeps falling towards the search's lower bound.
    nlls = [scaled_nll(*val, t) for t in np.geomspace(1.0, 1 / T_RANGE, 50)]
    assert all(b <= a for a, b in itertools.pairwise(nlls)) and nlls[-1] < 1e-12
    metrics = temperature_scaled_metrics(val, {"test_": (test_lp, test_y)})
    assert (metrics["val_temperature"], metrics["val_temperature_fitted"]) == (1.0, 0.0)
    raw = classification_metrics(test_lp.exp(), test_y, "test_")
    for name, value in raw.items():  # T = 1: every scaled metric is the raw one
        assert metrics[f"{name}_ts"] == pytest.approx(value, rel=1e-12)
    assert metrics["test_nll_ts"] < 1.0  # with T -> 0 it grew without bound


@pytest.mark.parametrize(
    ("log_probs", "labels", "reason"),
    [
        # One example, right: case (a), whatever the number of examples.
        (
            [[0.0, 1.0, 2.0]],
            [2],
            "the 1 validation example is classified correctly with a margin",
        ),
        # Every row gives every class the same log-probability: T changes nothing.
        (np.zeros((4, 3)), [0, 1, 2, 0], "each of the 4 validation rows gives every class"),
        # Identical rows, one class per row above the rest: the label is the top in each.
        ([[0.0, -1.0, -2.0]] * 3, [0, 0, 0], "all 3 validation examples are classified"),
        # Labels tied with another class at the top, the rest right: the NLL never rises.
        (
            [[0.0, 0.0, -3.0], [1.0, -1.0, -1.0]],
            [1, 0],
            "every one of the 2 validation examples' labels has its row's highest "
            "log-probability (1 tied with another class)",
        ),
        # Every label the least likely class: the NLL falls towards the uniform predictive.
        (
            [[0.0, 1.0], [0.0, 1.0]],
            [0, 0],
            "the validation NLL falls all the way up to T = 1000, the search's upper bound",
        ),
        # 26 right with a 10⁻³ margin, one wrong by 10⁻⁶: the minimiser is at T ≈ 1e-4, past
        # the search's lower bound.
        (
            [[1e-3, 0.0]] * 26 + [[-1e-6, 0.0]],
            [0] * 27,
            "the validation NLL falls all the way down to T = 0.001, the search's lower bound",
        ),
    ],
)
def test_inputs_that_do_not_determine_a_temperature_leave_it_at_1_and_say_why(
    log_probs, labels, reason
):
    fit = fit_temperature(np.array(log_probs, dtype=np.float64), np.array(labels))
    assert not fit.fitted and fit.temperature == 1.0
    assert fit.reason.startswith("not fitted: ") and reason in fit.reason
    assert fit.metrics() == {"val_temperature": 1.0, "val_temperature_fitted": 0.0}


def test_an_almost_separable_validation_set_is_still_fitted():
    """One error among 27 is enough for a finite minimiser: the guard must not swallow it."""
    log_probs, labels = separable()
    labels = labels.clone()
    labels[0] = (log_probs[0].argmax() + 1) % 3  # now wrong, by a margin of 0.5 to 4 nats
    fit = fit_temperature(log_probs, labels)
    assert fit.fitted and fit.reason is None and 1 / T_RANGE < fit.temperature < 1
    grid = np.exp(np.linspace(-math.log(T_RANGE), math.log(T_RANGE), 20001))
    nlls = np.array([scaled_nll(log_probs, labels, t) for t in grid])
    assert fit.temperature == pytest.approx(grid[nlls.argmin()], rel=2e-3)
    assert temperature_scaled_metrics((log_probs, labels), {})["val_temperature_fitted"] == 1.0


def test_a_temperature_fit_has_a_reason_exactly_when_it_was_not_fitted():
    with pytest.raises(ValueError, match="has a reason exactly when it was not fitted"):
        TemperatureFit(1.0, fitted=False)
    with pytest.raises(ValueError, match="has a reason exactly when it was not fitted"):
        TemperatureFit(2.0, fitted=True, reason="not fitted: ...")
    with pytest.raises(ValueError, match=r"not fitted is 1, got 0\.5"):
        TemperatureFit(0.5, fitted=False, reason="not fitted: ...")
