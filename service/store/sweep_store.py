"""The driver's side of the store: `sweeps.SweepStore` on the service's database.

The driver reads its spec and writes what happens: the start, each trial event (with the
best-so-far), and the outcome with each trial's final state. Each call is its own short
transaction, since the driver makes them from Tune's loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
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
    best_trials,
)
from sweeps.spec import Objective, SweepSpec


class DatabaseSweepStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.sessions = session_factory(engine)

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

    def record_trial(self, sweep_id: str, event: TrialEvent) -> None:
        with self.sessions() as session:
            upsert_trial(session, sweep_id, event)

    def record_outcome(self, sweep_id: str, outcome: SweepOutcome) -> None:
        with self.sessions() as session:
            record_outcome(session, sweep_id, outcome)

    def stop_requested(self, sweep_id: str) -> bool:
        with self.sessions() as session:
            return repository.get_sweep(session, sweep_id).cancel_requested


# ---------------------------------------------------------------- trial events


def upsert_trial(session: Session, sweep_id: str, event: TrialEvent) -> Trial:
    """Record one trial event; while the sweep is unfinished, refresh its best trial.

    An event without metrics (a retry announced before any report) keeps the last report.
    """
    with repository.writing(session):
        sweep = repository.locked(session, sweep_id)
        trial = _write_trial(
            session,
            sweep_id,
            trial_id=event.trial_id,
            name=event.trial_name,
            state=event.state,
            params=event.params,
            metrics=event.metrics,
            epoch=event.epoch,
            mlflow_run_id=event.mlflow_run_id,
            error=event.error,
        )
        values: dict[str, Any] = {}
        if sweep.status not in TERMINAL:
            best = _best_so_far(session, sweep)
            values["best"] = None if best is None else [best.summary()]
        repository.update_row(session, sweep_id, values)
    return trial


def _write_trial(
    session: Session,
    sweep_id: str,
    *,
    trial_id: str,
    name: str,
    state: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    epoch: int | None,
    mlflow_run_id: str | None,
    error: str | None,
) -> Trial:
    if state not in TRIAL_STATES:
        raise ValueError(f"unknown trial state {state!r}; known: {', '.join(TRIAL_STATES)}")
    trial = session.get(Trial, (sweep_id, trial_id), populate_existing=True)
    if trial is None:
        trial = Trial(sweep_id=sweep_id, trial_id=trial_id, params=json_safe(params), metrics={})
        session.add(trial)
    trial.name = name
    trial.state = state
    trial.error = error
    trial.updated_at = utcnow()
    if metrics:
        trial.metrics = json_safe(metrics)
    if epoch is not None and (metrics or trial.epoch is None):
        trial.epoch = epoch
    if mlflow_run_id is not None:
        trial.mlflow_run_id = mlflow_run_id
    session.flush()
    return trial


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


def _best_so_far(session: Session, sweep: Sweep) -> Trial | None:
    """The best trial by the first objective among the latest reports of every trial that
    has not failed (the final outcome replaces it with the driver's own choice)."""
    trials = session.scalars(
        sa.select(Trial).where(Trial.sweep_id == sweep.id).order_by(Trial.trial_id)
    )
    best = best_trials(objectives_of(sweep.spec)[:1], trials, finished_only=False)
    return best[0] if best else None


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
        for summary in outcome.trials:
            _write_summary(session, sweep_id, summary)
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


def _write_summary(session: Session, sweep_id: str, summary: TrialSummary) -> None:
    epoch = summary.metrics.get("epoch")
    _write_trial(
        session,
        sweep_id,
        trial_id=summary.trial_id,
        name=summary.name,
        state=summary.state,
        params=summary.params,
        metrics=summary.metrics,
        epoch=int(epoch) if isinstance(epoch, int | float) else None,
        mlflow_run_id=summary.mlflow_run_id,
        error=summary.error,
    )
