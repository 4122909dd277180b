"""A sweep's statuses in the service, and the sets the store, reconciler, routes and client use;
and what a sweep's best is (its basis), which the store keeps and the API and client show.

The transitions between the statuses are the store's status machine
(`service.store.status_machine`); the store keeps the best in `service.store.best`.
"""

from __future__ import annotations

SWEEP_STATUSES: tuple[str, ...] = (
    "queued",
    "pending",
    "submitted",
    "running",
    "cancelling",
    "succeeded",
    "failed",
    "cancelled",
)
# Nothing runs for these any more; only a resume (failed, cancelled → pending) leaves them.
TERMINAL: tuple[str, ...] = ("succeeded", "failed", "cancelled")
# A driver job exists (or should) for these.
ACTIVE: tuple[str, ...] = ("submitted", "running", "cancelling")
# Waiting for its owner's active-sweeps quota (`service.quotas`): the reconciler moves the
# oldest on to pending when an earlier sweep of theirs ends.
QUEUED = "queued"
# What counts against a user's active-sweeps quota: admitted to run, or running.
HOLDING_A_SLOT: tuple[str, ...] = ("pending", *ACTIVE)

# What a sweep's best is (``best_basis``): the store keeps one, by the one rule for best
# (`sweeps.records`), and says which.
# Several objectives: the non-dominated set of the trials that finished (succeeded or stopped:
# their metrics are final), while the sweep runs and at its end; empty until one finishes.
PARETO_OF_FINISHED = "pareto set of finished trials"
# One objective, while the sweep runs: the trial whose latest report is best (running trials
# included; a failed trial never), so it can change while the same trial stays best.
BEST_BY_LATEST_REPORT = "best so far by latest report"
# One objective, once the driver has reported its outcome: the best trial that finished.
BEST_FINISHED = "best finished trial"
BEST_BASES: tuple[str, ...] = (PARETO_OF_FINISHED, BEST_BY_LATEST_REPORT, BEST_FINISHED)
