"""A budget that moves while a sweep runs: how many trials in all, how many at once.

Tune fixes ``num_samples`` and ``max_concurrent_trials`` when a run starts. A sweep gives Tune
the caps instead (the most a change could ask for) and wraps its searcher in `BudgetLimiter`,
which asks the sweep's monitor (`sweeps.progress.SweepMonitor.budget`) before each new trial:
below the concurrency in force it passes the request on, at it it waits, and once the trials
in force exist it waits for the running ones and then tells Tune the search is finished. A
lowered concurrency never stops a running trial; it only starts fewer. The time budget in
force ends the sweep from `sweeps.progress.FailedTrialsStopper`.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import Searcher

from sweeps.progress import monitor_of


class BudgetLimiter(Searcher):
    """``searcher`` (Tune pickles this wrapper by this import path) with sweep ``sweep``'s
    budget in force. Without a monitor for the sweep (the searcher used outside a driver), it
    passes every request on."""

    budget_moves = True  # what `sweeps._ray_compat.restored_with_budget` looks for

    def __init__(self, searcher: Searcher, sweep: str) -> None:
        self.searcher = searcher
        self.sweep = sweep
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return bool(self.searcher.set_search_properties(metric, mode, config, **spec))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        monitor = monitor_of(self.sweep)
        if monitor is not None and monitor.budget is not None:
            budget = monitor.budget
            if monitor.created >= budget.max_trials:
                # Every trial of the budget exists: finished once none runs (a raise before
                # that is still taken).
                if monitor.live == 0:
                    # A str where Ray annotates a dict: its own ConcurrencyLimiter does the same.
                    return Searcher.FINISHED  # type: ignore[return-value]
                return None
            if monitor.live >= budget.max_concurrent_trials:
                return None
        config = self.searcher.suggest(trial_id)
        if monitor is not None and config is not None and config != Searcher.FINISHED:
            monitor.created += 1  # Tune counts it at its next step too
            monitor.live += 1
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def add_evaluated_point(self, *args: Any, **kwargs: Any) -> None:
        self.searcher.add_evaluated_point(*args, **kwargs)

    def get_state(self) -> dict[str, Any]:
        return {"sweep": self.sweep}

    def set_state(self, state: dict[str, Any]) -> None:
        self.sweep = state["sweep"]

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
