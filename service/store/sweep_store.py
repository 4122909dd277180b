"""The driver's side of the store: `sweeps.SweepStore` on the service's database.

The driver reads its spec and writes what happens: the start, batches of trial events (with
the best so far), and the outcome with each trial's final state. Each call is one short
transaction whose cost does not grow with the number of trials in the sweep.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from gradreg.names import DEFAULT_OBJECTIVE
from service.statuses import TERMINAL
from service.store import status_machine, sweep_queries, transactions, trial_queries
from service.store.database import session_factory
from service.store.models import SUMMARY_KEYS, TRIAL_STATES, Sweep, Trial, utcnow
from sweeps.records import (
    LOST_TRIAL,
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
        self._objectives: dict[str, Objective] = {}

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
            )

    def record_trials(self, sweep_id: str, events: Sequence[TrialEvent]) -> None:
        if not events:
            return
        objective = self._objectives.get(sweep_id)
        if objective is None:
            with self.sessions() as session:
                objective = objectives_of(sweep_queries.get_sweep(session, sweep_id).spec)[0]
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
            return sweep_queries.get_sweep(session, sweep_id).cancel_requested


# ---------------------------------------------------------------- trial events


def upsert_trial(session: Session, sweep_id: str, event: TrialEvent) -> Trial:
    """Record one trial event (`upsert_trials` with the sweep's own first objective)."""
    objective = objectives_of(sweep_queries.get_sweep(session, sweep_id).spec)[0]
    upsert_trials(session, sweep_id, [event], objective)
    trial = session.get(Trial, (sweep_id, event.trial_id))
    assert trial is not None  # just written
    return trial


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
    placement: Mapping[str, Any] | None = None

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
            event.placement or None,
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
) -> None:
    """Record trial events in order, in one transaction; while the sweep is unfinished, keep
    its best so far by ``objective`` (the sweep's first).

    An event without metrics (a retry announced before any report) keeps the last report. The
    cost does not grow with the sweep: the touched rows are read by key, and the best so far is
    one query on the (sweep, objective) index.
    """
    with transactions.writing(session):
        version, status, stored_best = transactions.bump(session, sweep_id)
        writes = [TrialWrite.of_event(event) for event in events]
        write_trials(session, sweep_id, writes, version, objective)
        if status not in TERMINAL:
            _refresh_best(session, sweep_id, stored_best)


def _refresh_best(session: Session, sweep_id: str, stored: Any) -> None:
    """Point the sweep's best at the trial with the lowest loss: one lookup on the (sweep,
    objective) index, which reads that trial's summary; an UPDATE only if it changed."""
    columns = [getattr(Trial, key) for key in SUMMARY_KEYS]
    best = (
        session.execute(
            sa.select(*columns)
            .where(Trial.sweep_id == sweep_id, Trial.objective.is_not(None))
            .order_by(Trial.objective, Trial.trial_id)
            .limit(1)
        )
        .mappings()
        .one_or_none()
    )
    summary = None if best is None else json_safe([dict(best)])
    if summary != stored:
        transactions.update_row(session, sweep_id, {"best": summary}, bump=False)


# What write_trials reads of a trial to merge an event into it.
_READ_TO_MERGE = (*SUMMARY_KEYS, "epoch", "placement")


def write_trials(
    session: Session,
    sweep_id: str,
    writes: Sequence[TrialWrite],
    version: int,
    objective: Objective,
) -> None:
    """Apply ``writes`` in order to the sweep's trial rows.

    Core statements, not the ORM's unit of work: reports (metrics and an epoch, the common
    case) are one INSERT … ON CONFLICT DO UPDATE; anything else is one SELECT of the touched
    rows by key, then one INSERT and one UPDATE (executemany). ``version`` is the sweep's,
    bumped in this transaction (`transactions.bump`). Trial objects the session already holds
    are expired, so that it reads the new rows.
    """
    for write in writes:
        if write.state not in TRIAL_STATES:
            raise ValueError(
                f"unknown trial state {write.state!r}; known: {', '.join(TRIAL_STATES)}"
            )
    if writes and all(write.metrics and write.epoch is not None for write in writes):
        _upsert_reports(session, sweep_id, writes, version, objective)
        return
    ids = list(dict.fromkeys(write.trial_id for write in writes))
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
    for write in writes:
        row = rows.setdefault(
            write.trial_id,
            {
                "trial_id": write.trial_id,
                "params": json_safe(write.params),
                "metrics": {},
                "epoch": None,
                "mlflow_run_id": None,
                "placement": None,
            },
        )
        row["name"], row["state"], row["error"] = write.name, write.state, write.error
        if write.metrics:
            row["metrics"] = json_safe(write.metrics)
        if write.epoch is not None and (write.metrics or row["epoch"] is None):
            row["epoch"] = write.epoch
        if write.mlflow_run_id is not None:
            row["mlflow_run_id"] = write.mlflow_run_id
        if write.placement is not None:
            row["placement"] = dict(write.placement)
    now = utcnow()
    for row in rows.values():
        if row["epoch"] is None:
            row["epoch"] = 0
        merged = Report(row["state"], row["metrics"])
        row["objective"] = loss(objective, merged, finished_only=False)
        row["number"] = trial_number(row["name"])
        row.update(sweep_id=sweep_id, version=version, updated_at=now)
    inserted = [row for trial_id, row in rows.items() if trial_id in new]
    updated = [row for trial_id, row in rows.items() if trial_id not in new]
    if inserted:
        session.execute(sa.insert(Trial), inserted)
    if updated:
        session.execute(sa.update(Trial), updated)  # by primary key, executemany
    session.expire_all()


def _upsert_reports(
    session: Session,
    sweep_id: str,
    writes: Sequence[TrialWrite],
    version: int,
    objective: Objective,
) -> None:
    """`write_trials` for writes that all carry metrics and an epoch (every report does): one
    INSERT … ON CONFLICT DO UPDATE per chunk, with no read first. A trial's last write wins;
    params stay as first stored; a run id is kept until a write names another."""
    last: dict[str, TrialWrite] = {}
    run_ids: dict[str, str] = {}
    placements: dict[str, dict[str, Any]] = {}
    for write in writes:
        last[write.trial_id] = write
        if write.mlflow_run_id is not None:
            run_ids[write.trial_id] = write.mlflow_run_id
        if write.placement is not None:
            placements[write.trial_id] = dict(write.placement)
    first_params = {w.trial_id: w.params for w in reversed(writes)}
    now = utcnow()
    values = [
        {
            "sweep_id": sweep_id,
            "trial_id": trial_id,
            "name": write.name,
            "number": trial_number(write.name),
            "state": write.state,
            "params": json_safe(first_params[trial_id]),
            "metrics": json_safe(write.metrics),
            "epoch": write.epoch,
            "mlflow_run_id": run_ids.get(trial_id),
            "placement": placements.get(trial_id),
            "error": write.error,
            "objective": loss(
                objective, Report(write.state, dict(write.metrics)), finished_only=False
            ),
            "version": version,
            "updated_at": now,
        }
        for trial_id, write in last.items()
    ]
    statement = _report_upsert(session.get_bind().dialect.name)
    for start in range(0, len(values), IN_CHUNK):
        session.execute(statement, values[start : start + IN_CHUNK])
    session.expire_all()


@functools.cache
def _report_upsert(dialect: str) -> Any:
    """The INSERT … ON CONFLICT DO UPDATE of `_upsert_reports`, built once (SQLAlchemy then
    reuses its compiled form; building it per call cost about 1 ms)."""
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    table = Trial.__table__
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
        version, _, _ = transactions.bump(session, sweep_id)
        writes = [TrialWrite.of_summary(summary) for summary in outcome.trials]
        write_trials(session, sweep_id, writes, version, objectives_of(sweep.spec)[0])
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
