"""The Pareto set kept one trial at a time (`pareto_update`) is `best_trials`' set: the store
keeps a running multi-objective sweep's best this way, and the driver's outcome uses
`best_trials`."""

from __future__ import annotations

import functools
import math
import random

import pytest

from sweeps.records import Report, best_trials, dominates, pareto_update
from sweeps.spec import Objective

OBJECTIVES = [Objective(metric="val_nll"), Objective(metric="val_accuracy", goal="maximize")]
STATES = ["succeeded", "stopped", "running", "failed", "interrupted", "retrying"]


def trials(seed: int, count: int) -> list[Report]:
    """Reports with few distinct values (so ties and equal points happen), some without a
    value, some not finished."""
    rng = random.Random(seed)
    found = []
    for _ in range(count):
        metrics: dict[str, float] = {"val_nll": rng.choice([0.1, 0.2, 0.3, 0.4])}
        accuracy = rng.choice([0.5, 0.6, 0.7, 0.8, math.nan, None])
        if accuracy is not None:
            metrics["val_accuracy"] = accuracy
        found.append(Report(rng.choice(STATES), metrics))
    return found


@pytest.mark.parametrize("seed", range(200))
def test_one_at_a_time_gives_best_trials_set_and_order(seed):
    reports = trials(seed, random.Random(seed).randint(0, 30))
    kept = functools.reduce(lambda front, t: pareto_update(OBJECTIVES, front, t), reports, [])
    expected = best_trials(OBJECTIVES, reports)
    assert [id(t) for t in kept] == [id(t) for t in expected]


def test_a_dominated_or_unfinished_trial_changes_nothing_and_a_better_one_evicts():
    a = Report("succeeded", {"val_nll": 0.2, "val_accuracy": 0.8})
    b = Report("stopped", {"val_nll": 0.1, "val_accuracy": 0.6})
    front = pareto_update(OBJECTIVES, pareto_update(OBJECTIVES, [], a), b)
    assert front == [b, a]  # neither dominates the other; by the first objective first
    worse = Report("succeeded", {"val_nll": 0.3, "val_accuracy": 0.7})
    running = Report("running", {"val_nll": 0.0, "val_accuracy": 1.0})
    assert pareto_update(OBJECTIVES, front, worse) == front
    assert pareto_update(OBJECTIVES, front, running) == front
    best = Report("succeeded", {"val_nll": 0.1, "val_accuracy": 0.9})
    assert pareto_update(OBJECTIVES, front, best) == [best]


def test_a_front_holding_a_trial_that_does_not_count_is_refused():
    running = Report("running", {"val_nll": 0.1, "val_accuracy": 0.9})
    new = Report("succeeded", {"val_nll": 0.2, "val_accuracy": 0.8})
    with pytest.raises(ValueError, match="does not count"):
        pareto_update(OBJECTIVES, [running], new)


def test_dominance_needs_no_worse_everywhere_and_a_difference():
    assert dominates([0.1, -0.9], [0.2, -0.9])
    assert not dominates([0.1, -0.9], [0.1, -0.9])  # equal points: both stay
    assert not dominates([0.1, -0.8], [0.2, -0.9])
