"""The driver's side of the store: `sweeps.SweepStore` on the service's database.

The driver reads its spec and writes what happens: the start, batches of trial events (with
the best so far), and the outcome with each trial's final state. Each call is one short
transaction whose cost does not grow with the number of trials in the sweep.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from gradreg.names import DEFAULT_OBJECTIVE
from service.statuses import TERMINAL
from service.store import best, status_machine, sweep_queries, transactions, trial_queries
from service.store.database import session_factory
from service.store.models import SUMMARY_KEYS, Sweep, Trial, utcnow
from sweeps.records import (
    LOST_TRIAL,
    TRIAL_STATES,
    Report,
    SweepOutcome,
    SweepRecord,
    TrialEvent,
    TrialSummary,
    loss,
    trial_number,
)
from sweeps.spec import Objective, SweepSpec
from sweeps.spec.limits import Limits
from sweeps.spec.parse import validate_shape

IN_CHUNK = 1000  # trial ids per IN (...) list


class DatabaseSweepStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.sessions = session_factory(engine)
        self._objectives: dict[str, list[Objective]] = {}

    def load_spec(self, sweep_id: str) -> SweepSpec:
        """The spec as the API admitted it; the driver checks it once more when it starts."""
        with self.sessions() as session:
            document = sweep_queries.get_sweep(session, sweep_id).spec
        return validate_shape(document)

    def load_limits(self, sweep_id: str) -> Limits | None:
        """The caps and data root the API admitted the sweep under (None for older sweeps)."""
        with self.sessions() as session:
            document = sweep_queries.get_sweep(session, sweep_id).limits
        return None if document is None else Limits.from_document(document)

    def record_start(self, sweep_id: str, record: SweepRecord) -> None:
        with self.sessions() as session:
            status_machine.mark_running(
                session,
                sweep_id,
                mlflow_experiment_id=record.experiment_id,
                mlflow_parent_run_id=record.parent_run_id,
                tracking_uri=record.tracking_uri,
                warm_start=record.extra.get("warm_start"),
            )

    def record_trials(self, sweep_id: str, events: Sequence[TrialEvent]) -> None:
        if not events:
            return
        objectives = self._objectives.get(sweep_id)
        if objectives is None:
            with self.sessions() as session:
                objectives = objectives_of(sweep_queries.get_sweep(session, sweep_id).spec)
            self._objectives[sweep_id] = objectives  # a sweep's objectives never change
        with self.sessions() as session:
            upsert_trials(session, sweep_id, events, objectives)

    def record_trial(self, sweep_id: str, event: TrialEvent) -> None:
        """One event alone (`record_trials` is what the driver calls)."""
        self.record_trials(sweep_id, [event])

    def record_outcome(self, sweep_id: str, outcome: SweepOutcome) -> None:
        with self.sessions() as session:
            record_outcome(session, sweep_id, outcome)

    def stop_requested(self, sweep_id: str) -> bool:
        with self.sessions() as session:
            return sweep_queries.get_sweep(session, sweep_id).cancel_requested

    def allowance(self, sweep_id: str) -> int | None:
        with self.sessions() as session:
            return sweep_queries.get_sweep(session, sweep_id).allowance

    def owner(self, sweep_id: str) -> str:
        with self.sessions() as session:
            return sweep_queries.get_sweep(session, sweep_id).owner


# ---------------------------------------------------------------- trial events


def upsert_trial(session: Session, sweep_id: str, event: TrialEvent) -> Trial:
    """Record one trial event (`upsert_trials` with the sweep's own objectives)."""
    objectives = objectives_of(sweep_queries.get_sweep(session, sweep_id).spec)
    upsert_trials(session, sweep_id, [event], objectives)
    trial = session.get(Trial, (sweep_id, event.trial_id))
    assert trial is not None  # just written
    return trial


def upsert_trials(
    session: Session, sweep_id: str, events: Sequence[TrialEvent], objectives: Sequence[Objective]
) -> None:
    """Record trial events in order, in one transaction; while the sweep is unfinished, keep
    its best by ``objectives`` (the sweep's: `service.store.best`).

    An event without metrics (a retry announced before any report) keeps the last report. The
    cost does not grow with the sweep: the touched rows are read by key, the best so far of one
    objective is one query on the (sweep, objective) index, and a Pareto set changes only by
    the trials that finish.
    """
    with transactions.writing(session):
        bumped = transactions.bump(session, sweep_id)
        write_trials(session, sweep_id, events, bumped.version, objectives[0])
        if bumped.status not in TERMINAL:
            states = {event.trial_id: event.state for event in events}
            stored = (bumped.best, bumped.best_basis)
            best.refresh(session, sweep_id, objectives, stored, states)


# What write_trials reads of a trial to merge an event into it.
_READ_TO_MERGE = (*SUMMARY_KEYS, "epoch", "placement")


def write_trials(
    session: Session,
    sweep_id: str,
    events: Sequence[TrialEvent],
    version: int,
    objective: Objective,
) -> None:
    """Apply ``events`` in order to the sweep's trial rows; ``objective`` is the sweep's first
    (each row keeps its loss by latest report, `Trial.objective`).

    Core statements, not the ORM's unit of work: reports (events with metrics, the common case)
    are one INSERT … ON CONFLICT DO UPDATE; anything else is one SELECT of the touched rows by
    key, then one INSERT and one UPDATE (executemany). ``version`` is the sweep's, bumped in
    this transaction (`transactions.bump`). Trial objects the session already holds are
    expired, so that it reads the new rows.
    """
    for event in events:
        if event.state not in TRIAL_STATES:
            raise ValueError(
                f"unknown trial state {event.state!r}; known: {', '.join(TRIAL_STATES)}"
            )
    stamp = functools.partial(
        _stamp, sweep_id=sweep_id, version=version, objective=objective, now=utcnow()
    )
    if events and all(event.metrics for event in events):
        _upsert_reports(session, [stamp(row) for row in _last_reports(events)])
    else:
        _merge_events(session, sweep_id, events, stamp)
    session.expire_all()


def _stamp(
    row: dict[str, Any], *, sweep_id: str, version: int, objective: Objective, now: datetime
) -> dict[str, Any]:
    """``row`` with what follows from it: its number (from its name) and its loss by
    ``objective``; and the sweep's id and version, and the time, of this write."""
    report = Report(row["state"], row["metrics"])
    row.update(
        sweep_id=sweep_id,
        number=trial_number(row["name"]),
        objective=loss(objective, report, finished_only=False),
        version=version,
        updated_at=now,
    )
    return row


def _merge_events(
    session: Session,
    sweep_id: str,
    events: Sequence[TrialEvent],
    stamp: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """Events merged into their trials' rows as read: an event without metrics (a retry
    announced before any report) keeps the last report, and its epoch unless there is none."""
    ids = list(dict.fromkeys(event.trial_id for event in events))
    rows: dict[str, dict[str, Any]] = {}
    columns = [getattr(Trial, key) for key in _READ_TO_MERGE]
    for start in range(0, len(ids), IN_CHUNK):
        found = session.execute(
            sa.select(*columns).where(
                Trial.sweep_id == sweep_id, Trial.trial_id.in_(ids[start : start + IN_CHUNK])
            )
        )
        rows.update((row["trial_id"], dict(row)) for row in found.mappings())
    new = set(ids) - set(rows)
    for event in events:
        row = rows.setdefault(
            event.trial_id,
            {
                "trial_id": event.trial_id,
                "params": json_safe(event.params),
                "metrics": {},
                "epoch": None,
                "mlflow_run_id": None,
                "placement": None,
            },
        )
        row["name"], row["state"], row["error"] = event.trial_name, event.state, event.error
        if event.metrics:
            row["metrics"] = json_safe(event.metrics)
        if event.metrics or row["epoch"] is None:
            row["epoch"] = event.epoch
        if event.mlflow_run_id is not None:
            row["mlflow_run_id"] = event.mlflow_run_id
        if event.placement:
            row["placement"] = dict(event.placement)
    stamped = {trial_id: stamp(row) for trial_id, row in rows.items()}
    inserted = [row for trial_id, row in stamped.items() if trial_id in new]
    updated = [row for trial_id, row in stamped.items() if trial_id not in new]
    if inserted:
        session.execute(sa.insert(Trial), inserted)
    if updated:
        session.execute(sa.update(Trial), updated)  # by primary key, executemany


def _last_reports(events: Sequence[TrialEvent]) -> list[dict[str, Any]]:
    """Each trial's row after reports that all carry metrics: its last report wins; params stay
    as first given; a run id and a placement are kept until a report names another."""
    last: dict[str, TrialEvent] = {}
    run_ids: dict[str, str] = {}
    placements: dict[str, dict[str, Any]] = {}
    for event in events:
        last[event.trial_id] = event
        if event.mlflow_run_id is not None:
            run_ids[event.trial_id] = event.mlflow_run_id
        if event.placement:
            placements[event.trial_id] = dict(event.placement)
    first_params = {event.trial_id: event.params for event in reversed(events)}
    return [
        {
            "trial_id": trial_id,
            "name": event.trial_name,
            "state": event.state,
            "params": json_safe(first_params[trial_id]),
            "metrics": json_safe(event.metrics),
            "epoch": event.epoch,
            "mlflow_run_id": run_ids.get(trial_id),
            "placement": placements.get(trial_id),
            "error": event.error,
        }
        for trial_id, event in last.items()
    ]


def _upsert_reports(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Rows written with no read first: one INSERT … ON CONFLICT DO UPDATE per chunk, which
    keeps the stored params, and the stored run id and placement where a row has none."""
    statement = _report_upsert(session.get_bind().dialect.name)
    for start in range(0, len(rows), IN_CHUNK):
        session.execute(statement, rows[start : start + IN_CHUNK])


@functools.cache
def _report_upsert(dialect: str) -> Any:
    """The INSERT … ON CONFLICT DO UPDATE of `_upsert_reports`, built once (SQLAlchemy then
    reuses its compiled form; building it per call cost about 1 ms)."""
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    table = cast(sa.Table, Trial.__table__)
    statement = insert(table)
    new = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[table.c.sweep_id, table.c.trial_id],
        set_={
            "name": new.name,
            "number": new.number,
            "state": new.state,
            "metrics": new.metrics,
            "epoch": new.epoch,
            "mlflow_run_id": sa.func.coalesce(new.mlflow_run_id, table.c.mlflow_run_id),
            "placement": sa.func.coalesce(new.placement, table.c.placement),
            "error": new.error,
            "objective": new.objective,
            "version": new.version,
            "updated_at": new.updated_at,
        },
    )


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
    """A stored spec document's objectives (DEFAULT_OBJECTIVE, minimised, when it names none)."""
    default = [{"metric": DEFAULT_OBJECTIVE}]
    return [Objective.model_validate(o) for o in spec.get("objectives") or default]


# ---------------------------------------------------------------- the driver's outcome


def record_outcome(session: Session, sweep_id: str, outcome: SweepOutcome) -> Sweep:
    """Store what the driver reports at its end: final trials, best, and the status it leads
    to (`status_machine.outcome_target`)."""
    with transactions.writing(session):
        sweep = transactions.locked(session, sweep_id)
        status, cancel_requested = sweep.status, sweep.cancel_requested
        version = transactions.bump(session, sweep_id).version
        objectives = objectives_of(sweep.spec)
        events = [summary_event(outcome.sweep, summary) for summary in outcome.trials]
        write_trials(session, sweep_id, events, version, objectives[0])
        # Trials Tune's saved state does not hold were started by a driver killed before Tune
        # saved them: the sweep cannot continue them and ran others in their place. The
        # reconciler may already have marked them interrupted when it failed the killed attempt;
        # now it is known that they will not come back, so the reason says so.
        known = {summary.trial_id for summary in outcome.trials}
        trial_queries.interrupt_trials(
            session, sweep_id, LOST_TRIAL, keep=known, states=("running", "retrying", "interrupted")
        )
        fields: dict[str, Any] = {
            "best": json_safe([asdict(trial) for trial in outcome.best]) or None,
            "best_basis": best.basis_of_outcome(len(objectives)),
        }
        if outcome.ensemble is not None:
            fields["ensemble"] = json_safe(outcome.ensemble)
        if outcome.registered_model is not None:
            fields["registered_model"] = json_safe(outcome.registered_model)
        for column, value in (
            ("mlflow_experiment_id", outcome.experiment_id),
            ("mlflow_parent_run_id", outcome.parent_run_id),
            ("tracking_uri", outcome.tracking_uri),
        ):
            if value and getattr(sweep, column) is None:
                fields[column] = value
        return status_machine.apply_outcome(
            session, sweep_id, status, cancel_requested, outcome.status, outcome.reason, fields
        )


def summary_event(sweep: str, summary: TrialSummary) -> TrialEvent:
    """A trial's final summary as the event the store writes: its epoch is its metrics' (0
    without one, as the driver's events have it)."""
    if summary.state not in TRIAL_STATES:
        raise ValueError(f"unknown trial state {summary.state!r}; known: {', '.join(TRIAL_STATES)}")
    epoch = summary.metrics.get("epoch")
    return TrialEvent(
        sweep=sweep,
        trial_id=summary.trial_id,
        trial_name=summary.name,
        state=summary.state,
        params=summary.params,
        metrics=summary.metrics,
        epoch=int(epoch) if isinstance(epoch, int | float) and math.isfinite(epoch) else 0,
        mlflow_run_id=summary.mlflow_run_id,
        error=summary.error,
    )
