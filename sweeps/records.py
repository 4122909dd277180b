"""What crosses process boundaries: trial states and events, trial summaries, sweep outcomes.

The driver writes these, the service's store reads them, and none of it needs Ray, torch or
MLflow, so the API and the store import this module cheaply. The rule for "best" lives here
too, once, for the driver's progress line, its outcome and the store's best-so-far.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, TypeVar, get_args

from gradreg.names import default_goal

TrialState = Literal["running", "retrying", "succeeded", "stopped", "failed", "interrupted"]
# Every state a trial can be in; `interrupted` is given only after the driver has ended.
TRIAL_STATES: tuple[TrialState, ...] = get_args(TrialState)
FINISHED_STATES: tuple[TrialState, ...] = ("succeeded", "stopped", "failed")
# Trials whose last report counts for the final best: they ended on their own terms.
SCORED_STATES: tuple[TrialState, ...] = ("succeeded", "stopped")
SweepStatus = Literal["succeeded", "failed", "stopped"]
OUTCOME_STATUSES: tuple[SweepStatus, ...] = get_args(SweepStatus)

SWEEP_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
SWEEP_NAME = re.compile(SWEEP_NAME_PATTERN)
# Keys a trial adds to its Tune reports besides its metrics.
RUN_ID_KEY = "mlflow_run_id"
BINS_KEY = "test_reliability_bins"
# Where the trial runs (`sweeps.placement`): node_id, node_ip, gpu_ids, device.
PLACEMENT_KEY = "placement"
LOST_TRIAL = (
    "lost: the sweep's driver stopped before Tune saved this trial, so the sweep could not "
    "continue it and ran another in its place"
)


@dataclass(frozen=True)
class TrialEvent:
    """One change of one trial, as the driver's hooks see it."""

    sweep: str
    trial_id: str
    trial_name: str
    state: TrialState
    params: dict[str, Any]
    metrics: dict[str, float]
    epoch: int
    mlflow_run_id: str | None
    error: str | None = None
    placement: dict[str, Any] | None = None


TrialHook = Callable[[TrialEvent], None]
StopFlag = Callable[[], bool]


@dataclass(frozen=True)
class TrialSummary:
    trial_id: str
    name: str
    state: str
    params: dict[str, Any]
    metrics: dict[str, float]
    mlflow_run_id: str | None
    error: str | None = None


@dataclass(frozen=True)
class SweepOutcome:
    sweep: str
    status: SweepStatus
    reason: str
    objectives: list[dict[str, str]]
    trials: list[TrialSummary]
    best: list[TrialSummary]  # one trial, or the Pareto set when there are several objectives
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    experiment_path: str
    # The sweep ensemble (`sweeps.ensemble`): selection, members, metrics; None when off.
    ensemble: dict[str, Any] | None = None
    # The best trial's model in the registry (name, version, uri; or name and error); None
    # when registration is off or no trial finished.
    registered_model: dict[str, str] | None = None
    # The preflight's reports, one per settings it tried (`sweeps.preflight`); None when the
    # sweep ran none (no user code).
    preflight: list[dict[str, Any]] | None = None

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for trial in self.trials:
            counts[trial.state] = counts.get(trial.state, 0) + 1
        return counts

    def ranked(self) -> list[TrialSummary]:
        """The trials that count for "best", best first by the first objective: the rule of
        `ranked_trials` (ended on their own terms, with a finite value)."""
        first = self.objectives[0]
        return ranked_trials(MetricGoal(first["metric"], first.get("goal")), self.trials)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts()}


@dataclass(frozen=True)
class SweepRecord:
    """What a sweep's storage directory remembers so that `resume NAME` needs nothing else."""

    sweep: str
    spec: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    data_root: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def trial_name(sweep: str, number: int | None, trial_id: str) -> str:
    """Tune's name of a trial: the sweep, the trial's number in it (from 1), its id."""
    suffix = trial_id.rsplit("_", 1)[-1]
    return f"{sweep}-{suffix}" if number is None else f"{sweep}-t{number}-{suffix}"


def trial_number(name: str) -> int | None:
    """The number in a `trial_name`; None for a name without one (a sweep saved before)."""
    parts = name.rsplit("-", 2)
    if len(parts) < 3 or not parts[1].startswith("t") or not parts[1][1:].isdigit():
        return None
    return int(parts[1][1:])


def reported_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers a trial reported (gradreg's epoch metrics), without Tune's own keys."""
    return {
        key: float(value)
        for key, value in result.items()
        if (key == "epoch" or key.startswith(("train_", "val_", "test_", "posterior_")))
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    }


# ---------------------------------------------------------------- best


class Goal(Protocol):
    @property
    def metric(self) -> str: ...

    @property
    def goal(self) -> str | None: ...


class Scored(Protocol):
    @property
    def state(self) -> str: ...

    @property
    def metrics(self) -> dict[str, Any]: ...


T = TypeVar("T", bound=Scored)


@dataclass(frozen=True)
class MetricGoal:
    """An objective as `SweepOutcome.objectives` and the store carry it: a metric and its goal
    (None: the metric's default)."""

    metric: str
    goal: str | None = None


@dataclass(frozen=True)
class Report:
    """A trial's state and latest metrics: the least that `loss` and `best_trials` score."""

    state: str
    metrics: dict[str, Any]


def score(trial: Scored, metric: str) -> float | None:
    """The trial's ``metric`` as a finite float, or None (missing, NaN, not a number)."""
    value = (trial.metrics or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _eligible(trial: Scored, finished_only: bool) -> bool:
    return trial.state in SCORED_STATES if finished_only else trial.state != "failed"


def loss(objective: Goal, trial: Scored, *, finished_only: bool = True) -> float | None:
    """The trial's ``objective`` as a loss (lower is better: a maximised metric is negated), or
    None when the trial does not count (see `best_trials`) or has no finite value."""
    if not _eligible(trial, finished_only):
        return None
    value = score(trial, objective.metric)
    if value is None:
        return None
    return -value if (objective.goal or default_goal(objective.metric)) == "maximize" else value


def ranked_trials(objective: Goal, trials: Iterable[T], *, finished_only: bool = True) -> list[T]:
    """Trials with a finite value of ``objective``, best first (ties keep their order)."""
    scored = []
    for trial in trials:
        value = loss(objective, trial, finished_only=finished_only)
        if value is not None:
            scored.append((value, trial))
    return [trial for _, trial in sorted(scored, key=lambda item: item[0])]


def counts_text(counts: Mapping[Any, int], max_trials: int | None = None) -> str:
    """A progress line's tally of trials by state, the driver's and the API client's alike:
    ``trials 3/8 done, 2 running, 1 failed`` (without ``max_trials``, ``trials 3 done, …``).
    Done is every finished state, failed included; running counts retrying trials too."""
    done = sum(counts.get(state, 0) for state in FINISHED_STATES)
    running = counts.get("running", 0) + counts.get("retrying", 0)
    of = "" if max_trials is None else f"/{max_trials}"
    return f"trials {done}{of} done, {running} running, {counts.get('failed', 0)} failed"


def best_so_far_text(metric: str, name: str, metrics: Mapping[str, Any]) -> str | None:
    """What a progress line says of the best trial so far: the driver's and the API client's
    say the same. The best so far is the trial whose latest report ranks first
    (`ranked_trials` with ``finished_only=False``: the store's best so far, the driver's heap),
    and the value is that latest report's, the one the trial would end with now. It can rise
    while the same trial stays best (a later epoch overfits), so the line names the epoch."""
    value = score(Report("running", dict(metrics)), metric)
    if value is None:
        return None
    epoch = score(Report("running", dict(metrics)), "epoch")
    at = f"{name} at epoch {int(epoch)}" if epoch is not None else name
    return f"best {metric} {value:.4g} ({at}, its latest report)"


def best_trials(
    objectives: Sequence[Goal], trials: Iterable[T], *, finished_only: bool = True
) -> list[T]:
    """The best trial for one objective; the Pareto set (non-dominated trials) for several.

    With ``finished_only`` only trials that ended on their own terms count (`SCORED_STATES`);
    without it every trial but a failed one counts by its latest report (best so far). Ties
    keep the order of ``trials``.
    """
    if len(objectives) == 1:
        return ranked_trials(objectives[0], trials, finished_only=finished_only)[:1]
    scored: list[tuple[list[float], T]] = []
    for trial in trials:
        losses = _losses(objectives, trial, finished_only)
        if losses is not None:
            scored.append((losses, trial))
    front = [(own, t) for own, t in scored if not any(dominates(other, own) for other, _ in scored)]
    return [trial for _, trial in sorted(front, key=lambda item: item[0])]


def pareto_update(objectives: Sequence[Goal], front: Sequence[T], trial: T) -> list[T]:
    """The Pareto set of several ``objectives`` with one more trial: ``front`` is `best_trials`
    of the finished trials so far, the result is `best_trials` with ``trial`` among them.

    A trial that does not count (not finished, or without a finite value of every objective)
    or that a member dominates changes nothing; otherwise it joins and the members it
    dominates leave. The order is `best_trials`'s, ``trial`` after the members it ties with.
    """
    new = _losses(objectives, trial, True)
    if new is None:
        return list(front)
    members: list[tuple[list[float], T]] = []
    for member in front:
        own = _losses(objectives, member, True)
        if own is None:
            raise ValueError(f"a Pareto set holds a trial that does not count: {member!r}")
        members.append((own, member))
    if any(dominates(own, new) for own, _ in members):
        return list(front)
    kept = [(own, member) for own, member in members if not dominates(new, own)]
    return [member for _, member in sorted([*kept, (new, trial)], key=lambda item: item[0])]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether losses ``a`` dominate ``b``: no worse in any objective and not the same."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and list(a) != list(b)


def _losses(objectives: Sequence[Goal], trial: Scored, finished_only: bool) -> list[float] | None:
    """The trial's value of each objective as a loss; None if it lacks one or does not count."""
    values = [loss(objective, trial, finished_only=finished_only) for objective in objectives]
    losses = [value for value in values if value is not None]
    return losses if len(losses) == len(values) else None
