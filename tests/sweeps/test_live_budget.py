"""A budget that moves while a sweep runs (issue 27): `BudgetLimiter` against a searcher that
records what it was asked, the monitor taking changes on its own clock, and a real sweep whose
concurrency drops and whose trial budget rises mid-run."""

from __future__ import annotations

import io
from typing import Any

import pytest
from ray.tune.search import Searcher

from sweeps.live_budget import BudgetLimiter
from sweeps.progress import SweepMonitor, register, unregister
from sweeps.spec import Budget, Objective
from tests.helpers.specs import serial_digits_spec


class Counting(Searcher):
    def __init__(self) -> None:
        super().__init__(metric="val_nll", mode="min")
        self.asked: list[str] = []

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        self.asked.append(trial_id)
        return {"x": len(self.asked)}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monitor():
    clock = Clock()
    found = SweepMonitor(
        sweep="moving",
        objectives=[Objective(metric="val_nll")],
        max_trials=3,
        stream=io.StringIO(),
        budget=Budget(max_trials=3, max_concurrent_trials=2, time_budget_s=60.0),
        clock=clock,
        stop_poll_s=1.0,
    )
    register(found)
    yield found
    unregister("moving")


def test_the_limiter_waits_at_the_concurrency_and_finishes_once_the_budget_ran(monitor):
    inner = Counting()
    limiter = BudgetLimiter(inner, "moving")
    assert limiter.suggest("a") == {"x": 1} and limiter.suggest("b") == {"x": 2}
    assert limiter.suggest("c") is None  # two running: the concurrency in force
    assert inner.asked == ["a", "b"]
    monitor.live = 1  # Tune's next step: one ended
    assert limiter.suggest("c") == {"x": 3}
    assert (monitor.created, monitor.live) == (3, 2)
    assert limiter.suggest("d") is None  # every trial of the budget exists; two still run
    monitor.live = 0
    assert limiter.suggest("d") == Searcher.FINISHED
    assert inner.asked == ["a", "b", "c"]


def test_a_raised_budget_is_taken_before_the_search_finishes(monitor):
    inner = Counting()
    limiter = BudgetLimiter(inner, "moving")
    monitor.created, monitor.live = 3, 1
    assert limiter.suggest("d") is None
    monitor.budget = monitor.budget.model_copy(update={"max_trials": 4})
    assert limiter.suggest("d") == {"x": 1}


def test_without_a_monitor_the_limiter_passes_every_request_on():
    inner = Counting()
    limiter = BudgetLimiter(inner, "no-such-sweep")
    assert [limiter.suggest(t) for t in "abcde"] == [{"x": n} for n in range(1, 6)]


def test_the_monitor_takes_a_change_at_most_once_per_poll_interval_and_keeps_it(monitor):
    wanted = [Budget(max_trials=5, max_concurrent_trials=1, time_budget_s=60.0)]
    monitor.read_budget = lambda: wanted[0]
    monitor.clock.now = 0.5
    monitor.poll_budget()
    assert monitor.budget.max_concurrent_trials == 1  # the first poll asks at once
    wanted[0] = Budget(max_trials=6, max_concurrent_trials=1, time_budget_s=60.0)
    monitor.clock.now = 1.0
    monitor.poll_budget()
    assert monitor.budget.max_trials == 5  # 0.5 s since the last ask
    monitor.clock.now = 1.5
    monitor.poll_budget()
    assert monitor.budget.max_trials == 6
    assert monitor.budget_changes == [
        {"max_trials": [3, 5], "max_concurrent_trials": [2, 1]},
        {"max_trials": [5, 6]},
    ]
    assert "budget: max_trials 3 → 5, max_concurrent_trials 2 → 1" in monitor.stream.getvalue()


def test_the_time_budget_in_force_counts_from_the_attempts_start(monitor):
    monitor.clock.now = 59.0
    assert not monitor.out_of_time
    monitor.budget = monitor.budget.model_copy(update={"time_budget_s": 30.0})
    assert monitor.out_of_time
    monitor.budget = monitor.budget.model_copy(update={"time_budget_s": None})
    assert not monitor.out_of_time


def test_a_running_sweep_takes_a_lower_concurrency_and_a_higher_trial_budget(
    ray_local, driver_options, tracking_uri
):
    import dataclasses

    from mlflow import MlflowClient

    from sweeps import run_sweep

    spec = serial_digits_spec("moving-budget", epochs=3, trials=2)
    spec = spec.model_copy(
        update={"budget": spec.budget.model_copy(update={"max_concurrent_trials": 2})}
    )
    finished: list[str] = []
    lowered = spec.budget.model_copy(update={"max_concurrent_trials": 1, "max_trials": 4})

    def budget() -> Budget:
        # Once the first trial ended: one at a time, and two more trials.
        return lowered if finished else spec.budget

    def on_trial(event) -> None:
        if event.state == "succeeded":
            finished.append(event.trial_id)

    options = dataclasses.replace(driver_options, stop_poll_s=0.0)
    outcome = run_sweep(spec, options, on_trial=on_trial, budget=budget)

    assert outcome.status == "succeeded", outcome.reason
    assert len(outcome.trials) == 4  # the raised budget was reached
    client = MlflowClient(tracking_uri)
    runs = sorted(
        (client.get_run(t.mlflow_run_id).info for t in outcome.trials),
        key=lambda info: info.start_time,
    )
    first, second, third, fourth = runs
    assert second.start_time < first.end_time  # two at once before the change
    # After it, one at a time: the third waited for both, the fourth for the third.
    assert third.start_time >= max(first.end_time, second.end_time)
    assert fourth.start_time >= third.end_time
