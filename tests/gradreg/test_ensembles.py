"""Ensembles of predictive distributions: averages, Caruana's greedy selection, metrics."""

from __future__ import annotations

import pytest
import torch

from gradreg.evaluation.ensembles import average, evaluate_ensemble, greedy_selection
from gradreg.evaluation.metrics import classification_metrics


def candidates(n: int = 6, examples: int = 50, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (examples,), generator=g)
    probs = []
    for k in range(n):
        logits = torch.randn(examples, classes, generator=g, dtype=torch.float64) * (1 + k / 2)
        logits[torch.arange(examples), labels] += 1.0
        probs.append(torch.softmax(logits, -1))
    return probs, labels


def nll(p: torch.Tensor, y: torch.Tensor) -> float:
    return float(-p.gather(1, y[:, None]).log().mean())


def test_greedy_selection_takes_the_best_addition_at_every_step():
    probs, labels = candidates()
    chosen = greedy_selection(probs, labels, 4)
    assert chosen[0] == min(range(6), key=lambda i: nll(probs[i], labels))
    for step in range(1, 4):
        so_far = chosen[:step]
        scores = [nll(average(probs, [*so_far, i]), labels) for i in range(6)]
        assert chosen[step] == min(range(6), key=scores.__getitem__)


def test_greedy_on_validation_is_never_worse_than_the_best_single_member_there():
    probs, labels = candidates(seed=3)
    chosen = greedy_selection(probs, labels, 5)
    best_single = min(nll(p, labels) for p in probs)
    assert nll(average(probs, chosen), labels) <= best_single + 1e-12


def test_the_ensemble_metrics_are_those_of_the_averaged_probabilities():
    val, val_y = candidates(seed=1)
    test, test_y = candidates(seed=2)
    result = evaluate_ensemble(
        {"val": val, "test": test}, {"val": val_y, "test": test_y}, [0, 2, 2]
    )
    mean_test = (test[0] + 2 * test[2]) / 3
    expected = classification_metrics(mean_test, test_y, "test_")
    for key, value in expected.items():
        assert result.metrics[key] == pytest.approx(value, rel=1e-12)
    assert {"val_temperature", "test_nll_ts", "val_ece_ts"} <= set(result.metrics)
    assert result.temperature.fitted and result.metrics["val_temperature_fitted"] == 1.0
    assert result.test_bins.count.sum() == len(test_y)


def test_members_must_have_predicted_the_same_split():
    probs, _ = candidates()
    with pytest.raises(ValueError, match="different shapes"):
        average([probs[0], probs[1][:10]])
    with pytest.raises(ValueError, match="at least one member"):
        average(probs, [])


def test_an_ensemble_that_separates_the_validation_labels_leaves_its_temperature_at_1():
    val, val_y = candidates(n=3, examples=20, seed=4)
    # Every member right on every validation example, by a margin: so is their average.
    val = [
        torch.softmax(torch.log(p) + 6.0 * torch.nn.functional.one_hot(val_y, 4), -1) for p in val
    ]
    test, test_y = candidates(n=3, examples=30, seed=5)
    result = evaluate_ensemble(
        {"val": val, "test": test}, {"val": val_y, "test": test_y}, [0, 1, 2]
    )
    assert result.metrics["val_accuracy"] == 1.0 and result.metrics["test_accuracy"] < 1.0
    assert not result.temperature.fitted and result.temperature.temperature == 1.0
    assert "all 20 validation examples are classified correctly" in result.temperature.reason
    assert result.metrics["val_temperature_fitted"] == 0.0
    for split in ("val", "test"):
        for metric in ("accuracy", "nll", "ece", "aece", "brier"):
            key = f"{split}_{metric}"
            assert result.metrics[f"{key}_ts"] == pytest.approx(result.metrics[key], rel=1e-9)
