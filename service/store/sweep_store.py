"""The driver's side of the store: `sweeps.SweepStore` on the service's database.

The driver reads its spec and writes what happens: the start, batches of trial events (with
the best so far), and the outcome with each trial's final state. Each call is one short
transaction whose cost does not grow with the number of trials in the sweep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.statuses import TERMINAL
from service.store import repository
from service.store.database import session_factory
from service.store.models import TRIAL_STATES, Sweep, Trial, utcnow
from sweeps.limits import Limits
from sweeps.parse import validate_shape
from sweeps.records import (
    LOST_TRIAL,
    OUTCOME_STATUSES,
    SweepOutcome,
    SweepRecord,
    TrialEvent,
    TrialSummary,
    loss,
)
from sweeps.spec import Objective, SweepSpec

IN_CHUNK = 1000  # trial ids per IN (...) list


class DatabaseSweepStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.sessions = session_factory(engine)
        self._objectives: dict[str, Objective] = {}

    def load_spec(self, sweep_id: str) -> SweepSpec:
        """The spec as the API admitted it; the driver checks it once more when it starts."""
        with self.sessions() as session:
            document = repository.get_sweep(session, sweep_id).spec
        return validate_shape(document)

    def load_limits(self, sweep_id: str) -> Limits | None:
        """The caps and data root the API admitted the sweep under (None for older sweeps)."""
        with self.sessions() as session:
            document = repository.get_sweep(session, sweep_id).limits
        return None if document is None else Limits.from_document(document)

    def record_start(self, sweep_id: str, record: SweepRecord) -> None:
        with self.sessions() as session:
            repository.mark_running(
                session,
                sweep_id,
                mlflow_experiment_id=record.experiment_id,
                mlflow_parent_run_id=record.parent_run_id,
                tracking_uri=record.tracking_uri,
            )

    def record_trials(self, sweep_id: str, events: Sequence[TrialEvent]) -> None:
        if not events:
            return
        objective = self._objectives.get(sweep_id)
        if objective is None:
            with self.sessions() as session:
                objective = objectives_of(repository.get_sweep(session, sweep_id).spec)[0]
            self._objectives[sweep_id] = objective  # a sweep's objectives never change
        with self.sessions() as session:
            upsert_trials(session, sweep_id, events, objective)

    def record_trial(self, sweep_id: str, event: TrialEvent) -> None:
        """One event alone (`record_trials` is what the driver calls)."""
        self.record_trials(sweep_id, [event])

    def record_outcome(self, sweep_id: str, outcome: SweepOutcome) -> None:
        with self.sessions() as session:
            record_outcome(session, sweep_id, outcome)

    def stop_requested(self, sweep_id: str) -> bool:
        with self.sessions() as session:
            return repository.get_sweep(session, sweep_id).cancel_requested


# ---------------------------------------------------------------- trial events


def upsert_trial(session: Session, sweep_id: str, event: TrialEvent) -> Trial:
    """Record one trial event (`upsert_trials` with the sweep's own first objective)."""
    objective = objectives_of(repository.get_sweep(session, sweep_id).spec)[0]
    return upsert_trials(session, sweep_id, [event], objective)[0]


@dataclass(frozen=True)
class TrialWrite:
    """What the store writes of one trial: from a driver's event or from its outcome."""

    trial_id: str
    name: str
    state: str
    params: Mapping[str, Any]
    metrics: Mapping[str, Any]
    epoch: int | None
    mlflow_run_id: str | None
    error: str | None

    @classmethod
    def of_event(cls, event: TrialEvent) -> TrialWrite:
        return cls(
            event.trial_id,
            event.trial_name,
            event.state,
            event.params,
            event.metrics,
            event.epoch,
            event.mlflow_run_id,
            event.error,
        )

    @classmethod
    def of_summary(cls, summary: TrialSummary) -> TrialWrite:
        epoch = summary.metrics.get("epoch")
        return cls(
            summary.trial_id,
            summary.name,
            summary.state,
            summary.params,
            summary.metrics,
            int(epoch) if isinstance(epoch, int | float) else None,
            summary.mlflow_run_id,
            summary.error,
        )


def upsert_trials(
    session: Session, sweep_id: str, events: Sequence[TrialEvent], objective: Objective
) -> list[Trial]:
    """Record trial events in order, in one transaction; while the sweep is unfinished, keep
    its best so far by ``objective`` (the sweep's first).

    An event without metrics (a retry announced before any report) keeps the last report. The
    cost does not grow with the sweep: the touched rows are read by key, and the best so far is
    one query on the (sweep, objective) index.
    """
    with repository.writing(session):
        version, status, stored_best = repository.bump(session, sweep_id)
        written = write_trials(
            session, sweep_id, [TrialWrite.of_event(e) for e in events], version, objective
        )
        if status not in TERMINAL:
            best = session.scalars(
                sa.select(Trial)
                .where(Trial.sweep_id == sweep_id, Trial.objective.is_not(None))
                .order_by(Trial.objective, Trial.trial_id)
                .limit(1)
            ).one_or_none()
            summary = None if best is None else json_safe([best.summary()])
            if summary != stored_best:
                repository.update_row(session, sweep_id, {"best": summary}, bump=False)
    return written


def write_trials(
    session: Session,
    sweep_id: str,
    writes: Sequence[TrialWrite],
    version: int,
    objective: Objective,
) -> list[Trial]:
    """Apply ``writes`` in order to the sweep's trial rows (read once, by key) and flush.

    ``version`` is the sweep's, bumped in this transaction (`repository.bump`).
    """
    for write in writes:
        if write.state not in TRIAL_STATES:
            raise ValueError(
                f"unknown trial state {write.state!r}; known: {', '.join(TRIAL_STATES)}"
            )
    ids = list(dict.fromkeys(write.trial_id for write in writes))
    trials: dict[str, Trial] = {}
    for start in range(0, len(ids), IN_CHUNK):
        rows = session.scalars(
            sa.select(Trial)
            .where(Trial.sweep_id == sweep_id, Trial.trial_id.in_(ids[start : start + IN_CHUNK]))
            .execution_options(populate_existing=True)
        )
        trials.update((trial.trial_id, trial) for trial in rows)
    written = []
    for write in writes:
        trial = trials.get(write.trial_id)
        if trial is None:
            trial = Trial(
                sweep_id=sweep_id,
                trial_id=write.trial_id,
                params=json_safe(write.params),
                metrics={},
            )
            session.add(trial)
            trials[write.trial_id] = trial
        trial.name = write.name
        trial.state = write.state
        trial.error = write.error
        trial.updated_at = utcnow()
        if write.metrics:
            trial.metrics = json_safe(write.metrics)
        if write.epoch is not None and (write.metrics or trial.epoch is None):
            trial.epoch = write.epoch
        if write.mlflow_run_id is not None:
            trial.mlflow_run_id = write.mlflow_run_id
        written.append(trial)
    for trial in trials.values():
        trial.version = version
        trial.objective = loss(objective, trial, finished_only=False)
    session.flush()
    return written


def json_safe(value: Any) -> Any:
    """``value`` with NaN and ±inf as None: PostgreSQL's JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def objectives_of(spec: Mapping[str, Any]) -> list[Objective]:
    """A stored spec document's objectives (val_nll, minimised, when it names none)."""
    return [Objective.model_validate(o) for o in spec.get("objectives") or [{"metric": "val_nll"}]]


# ---------------------------------------------------------------- the driver's outcome


def record_outcome(session: Session, sweep_id: str, outcome: SweepOutcome) -> Sweep:
    """Store what the driver reports at its end: final trials, best, status.

    succeeded/failed become that status (cancelled if a cancel was pending: the sweep was asked
    to stop and the status machine has no way from cancelling to anything else). stopped becomes
    cancelled if a cancel was requested; otherwise the status stays and only the reason is kept,
    so the reconciler can resubmit a sweep whose driver stopped unasked.
    """
    with repository.writing(session):
        sweep = repository.locked(session, sweep_id)
        status = sweep.status
        version, _, _ = repository.bump(session, sweep_id)
        writes = [TrialWrite.of_summary(summary) for summary in outcome.trials]
        write_trials(session, sweep_id, writes, version, objectives_of(sweep.spec)[0])
        # Trials Tune's saved state does not hold were started by a driver killed before Tune
        # saved them: the sweep cannot continue them and ran others in their place. The
        # reconciler may already have marked them interrupted when it failed the killed attempt;
        # now it is known that they will not come back, so the reason says so.
        known = {summary.trial_id for summary in outcome.trials}
        repository.interrupt_trials(
            session, sweep_id, LOST_TRIAL, keep=known, states=("running", "retrying", "interrupted")
        )
        fields: dict[str, Any] = {
            "reason": outcome.reason,
            "best": json_safe([asdict(trial) for trial in outcome.best]) or None,
        }
        if outcome.ensemble is not None:
            fields["ensemble"] = json_safe(outcome.ensemble)
        for column, value in (
            ("mlflow_experiment_id", outcome.experiment_id),
            ("mlflow_parent_run_id", outcome.parent_run_id),
            ("tracking_uri", outcome.tracking_uri),
        ):
            if value and getattr(sweep, column) is None:
                fields[column] = value
        target = _final_status(sweep, outcome.status)
        if target is None or target == status:
            repository.update_row(session, sweep_id, fields)
            return repository.reload(session, sweep_id)
        if status in ("pending", "submitted") and target != "cancelled":
            repository.apply_mark_running(session, sweep_id, {})
        if status == "cancelling" and outcome.status != "stopped":
            fields["reason"] = f"cancel requested; the sweep had {outcome.status}: {outcome.reason}"
        return repository.apply_transition(session, sweep_id, target, fields)


def _final_status(sweep: Sweep, outcome_status: str) -> str | None:
    if outcome_status not in OUTCOME_STATUSES:
        raise ValueError(
            f"unknown outcome status {outcome_status!r}; known: {', '.join(OUTCOME_STATUSES)}"
        )
    if outcome_status == "stopped":
        return "cancelled" if sweep.cancel_requested else None
    return "cancelled" if sweep.status == "cancelling" else outcome_status
