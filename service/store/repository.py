"""Queries and state changes of the store: plain functions on a `Session`.

Every function that writes is one transaction and commits it (work already pending in the
session is committed first, so that on SQLite the write starts with the lock it needs). Every
write to a sweep, its trials included, bumps the sweep's ``version`` and ``updated_at``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.store.database import WRITE_LOCK
from service.store.models import (
    IDEMPOTENCY_KEY_MAX,
    SWEEP_STATUSES,
    TRIAL_STATES,
    IdempotencyKey,
    Sweep,
    SweepTag,
    Trial,
    new_sweep_id,
    utcnow,
)

if TYPE_CHECKING:
    from sweeps.driver import SweepOutcome, TrialSummary
    from sweeps.progress import TrialEvent

TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"submitted", "cancelled"}),
    "submitted": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "cancelling"}),
    "cancelling": frozenset({"cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset({"pending"}),  # resume
    "cancelled": frozenset({"pending"}),  # resume
}
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
# What callers may set along with a transition (or alone, with `update_sweep`).
SETTABLE_FIELDS = frozenset(
    {
        "reason",
        "submission_id",
        "mlflow_experiment_id",
        "mlflow_parent_run_id",
        "tracking_uri",
        "cancel_requested",
        "best",
    }
)
MAX_PAGE = 500
LOST_TRIAL = (
    "lost: the sweep's driver stopped before Tune saved this trial, so the sweep could not "
    "continue it and ran another in its place"
)
DEFAULT_OBJECTIVE = {"metric": "val_nll", "goal": "minimize"}


class SweepNotFound(LookupError):
    def __init__(self, sweep_id: str) -> None:
        super().__init__(f"no sweep {sweep_id!r}")
        self.sweep_id = sweep_id


class InvalidTransition(ValueError):
    def __init__(self, sweep_id: str, current: str, target: str) -> None:
        self.sweep_id = sweep_id
        self.current = current
        self.target = target
        self.allowed = sorted(TRANSITIONS.get(current, ()))
        allowed = ", ".join(self.allowed) or "none (it is final)"
        super().__init__(
            f"sweep {sweep_id} is {current}; it cannot become {target} "
            f"(allowed from {current}: {allowed})"
        )


class IdempotencyConflict(ValueError):
    def __init__(self, key: str, sweep_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used with a different request "
            f"(it created sweep {sweep_id})"
        )
        self.key = key
        self.sweep_id = sweep_id


class InvalidCursor(ValueError):
    pass


# ---------------------------------------------------------------- transactions


@contextmanager
def _writing(session: Session) -> Iterator[None]:
    if session.in_transaction():
        session.commit()
    session.connection(execution_options={WRITE_LOCK: True})
    try:
        yield
        session.commit()
    except BaseException:
        session.rollback()
        raise


def _update(session: Session, sweep_id: str, values: Mapping[str, Any], *where: Any) -> bool:
    """UPDATE one sweep (if ``where`` holds), bumping its version; True if a row changed."""
    statement = (
        sa.update(Sweep)
        .where(Sweep.id == sweep_id, *where)
        .values(**values, version=Sweep.version + 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).rowcount == 1


def _reload(session: Session, sweep_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id, populate_existing=True)
    if sweep is None:
        raise SweepNotFound(sweep_id)
    return sweep


def _locked(session: Session, sweep_id: str) -> Sweep:
    """The sweep, its row locked until commit on PostgreSQL (SQLite's writer lock covers it)."""
    statement = (
        sa.select(Sweep)
        .where(Sweep.id == sweep_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    sweep = session.scalars(statement).one_or_none()
    if sweep is None:
        raise SweepNotFound(sweep_id)
    return sweep


def _settable(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - SETTABLE_FIELDS
    if unknown:
        raise ValueError(
            f"cannot set {', '.join(sorted(unknown))} on a sweep; "
            f"settable: {', '.join(sorted(SETTABLE_FIELDS))}"
        )
    return dict(fields)


# ---------------------------------------------------------------- status machine


def _stamps(target: str) -> dict[str, Any]:
    now = utcnow()
    if target == "submitted":
        return {"submitted_at": now}
    if target == "running":
        return {"started_at": now}
    if target in TERMINAL_STATUSES:
        return {"finished_at": now}
    if target == "pending":  # resume
        return {
            "attempt": Sweep.attempt + 1,
            "cancel_requested": False,
            "reason": None,
            "finished_at": None,
        }
    return {}


def _transition(
    session: Session,
    sweep_id: str,
    target: str,
    fields: Mapping[str, Any],
    only_from: Collection[str] | None = None,
) -> Sweep:
    if target not in SWEEP_STATUSES:
        raise ValueError(f"unknown sweep status {target!r}; known: {', '.join(SWEEP_STATUSES)}")
    sources = {source for source, targets in TRANSITIONS.items() if target in targets}
    if only_from is not None:
        sources &= set(only_from)
    values = {**_stamps(target), **_settable(fields), "status": target}
    # The status check is part of the UPDATE, so of two racing writers only one can win.
    if not _update(session, sweep_id, values, Sweep.status.in_(sources)):
        current = session.scalar(sa.select(Sweep.status).where(Sweep.id == sweep_id))
        if current is None:
            raise SweepNotFound(sweep_id)
        raise InvalidTransition(sweep_id, current, target)
    if target in TERMINAL_STATUSES:
        # Nothing runs for a finished sweep: a trial still marked running lost its driver.
        why = fields.get("reason") or "no reason given"
        _interrupt_trials(session, sweep_id, f"the sweep became {target} while it ran: {why}")
    return _reload(session, sweep_id)


def transition(session: Session, sweep_id: str, to: str, **fields: Any) -> Sweep:
    """Move a sweep to status ``to`` (see `TRANSITIONS`), setting ``fields`` with it.

    submitted_at, started_at and finished_at are set on the transitions into submitted, running
    and a final status; resuming (failed|cancelled → pending) adds one to ``attempt`` and clears
    ``cancel_requested``, ``reason`` and ``finished_at``.
    """
    with _writing(session):
        return _transition(session, sweep_id, to, fields)


def end_attempt(session: Session, sweep_id: str, reason: str, resubmit: bool) -> Sweep:
    """The sweep's driver ended without a result: the attempt failed, saying why.

    With ``resubmit`` the sweep goes on to pending as its next attempt in the same transaction,
    so no reader (a client following it, the events stream) ever sees the transient failed.
    """
    with _writing(session):
        failed = _transition(session, sweep_id, "failed", {"reason": reason})
        if not resubmit:
            return failed
        why = f"attempt {failed.attempt + 1} resumes it: {reason}"
        _transition(session, sweep_id, "pending", {})
        _update(session, sweep_id, {"reason": why})
        return _reload(session, sweep_id)


def update_sweep(session: Session, sweep_id: str, **fields: Any) -> Sweep:
    """Set fields of a sweep without changing its status."""
    with _writing(session):
        if not _update(session, sweep_id, _settable(fields)):
            raise SweepNotFound(sweep_id)
        return _reload(session, sweep_id)


def request_cancel(session: Session, sweep_id: str) -> Sweep:
    """Ask a sweep to stop: one that has not run is cancelled now, a running one is cancelling.

    Asking again is harmless; a sweep that already succeeded or failed cannot be cancelled.
    """
    with _writing(session):
        sweep = _locked(session, sweep_id)
        if sweep.status in ("cancelling", "cancelled"):
            return sweep
        if sweep.status == "running":
            return _transition(
                session, sweep_id, "cancelling", {"cancel_requested": True}, only_from=["running"]
            )
        return _transition(
            session,
            sweep_id,
            "cancelled",
            {"cancel_requested": True, "reason": "cancelled before it ran"},
            only_from=["pending", "submitted"],
        )


def mark_running(session: Session, sweep_id: str, **fields: Any) -> Sweep:
    """The driver has started: submitted (or pending, for a driver started by hand) → running.

    A sweep already running or cancelling (a driver restarted) only takes the ``fields``.
    """
    with _writing(session):
        return _mark_running(session, sweep_id, fields)


def _mark_running(session: Session, sweep_id: str, fields: Mapping[str, Any]) -> Sweep:
    sweep = _locked(session, sweep_id)
    if sweep.status in ("running", "cancelling"):
        _update(session, sweep_id, _settable(fields))
        return _reload(session, sweep_id)
    if sweep.status == "pending":
        _transition(session, sweep_id, "submitted", {})
    return _transition(session, sweep_id, "running", fields)


# ---------------------------------------------------------------- creating and reading


def request_hash(document: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a request body: key order and spacing do not matter."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_sweep(
    session: Session, spec_document: Mapping[str, Any], *, idempotency_key: str | None = None
) -> tuple[Sweep, bool]:
    """Store a new pending sweep; with a key seen before, return that key's sweep instead.

    Returns (sweep, created). The same key with a different body raises `IdempotencyConflict`.
    """
    name = spec_document.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"a spec document needs a name; got {name!r}")
    tags = list(spec_document.get("tags") or [])
    digest = request_hash(spec_document)
    if idempotency_key is not None:
        if not 0 < len(idempotency_key) <= IDEMPOTENCY_KEY_MAX:
            raise ValueError(
                f"idempotency key must have 1 to {IDEMPOTENCY_KEY_MAX} characters, "
                f"got {len(idempotency_key)}"
            )
        existing = _keyed_sweep(session, idempotency_key, digest)
        if existing is not None:
            return existing, False
    with _writing(session):
        sweep = Sweep(
            id=new_sweep_id(),
            name=name,
            spec=dict(spec_document),
            tags=tags,
            status="pending",
            tag_rows=[SweepTag(tag=tag) for tag in dict.fromkeys(tags)],
        )
        session.add(sweep)
        if idempotency_key is not None:
            session.add(IdempotencyKey(key=idempotency_key, sweep=sweep, request_hash=digest))
        try:
            session.flush()
        except IntegrityError:
            # Another request with this key committed first: answer with its sweep.
            session.rollback()
            existing = _keyed_sweep(session, idempotency_key, digest)
            if existing is None:
                raise
            return existing, False
    return sweep, True


def _keyed_sweep(session: Session, key: str | None, digest: str) -> Sweep | None:
    if key is None:
        return None
    row = session.get(IdempotencyKey, key, populate_existing=True)
    if row is None:
        return None
    if row.request_hash != digest:
        raise IdempotencyConflict(key, row.sweep_id)
    return _reload(session, row.sweep_id)


def get_sweep(session: Session, sweep_id: str) -> Sweep:
    return _reload(session, sweep_id)


def changes_since(session: Session, sweep_id: str, version: int) -> Sweep | None:
    """The sweep if it changed after ``version``, else None (for an event stream's poll)."""
    sweep = _reload(session, sweep_id)
    return sweep if sweep.version > version else None


def list_sweeps(
    session: Session,
    *,
    status: str | Collection[str] | None = None,
    tag: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Sweep], str | None]:
    """A page of sweeps, newest first, and the cursor of the next page (None on the last)."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    query = sa.select(Sweep)
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        unknown = set(statuses) - set(SWEEP_STATUSES)
        if unknown:
            raise ValueError(
                f"unknown sweep status {', '.join(sorted(unknown))}; "
                f"known: {', '.join(SWEEP_STATUSES)}"
            )
        query = query.where(Sweep.status.in_(statuses))
    if tag is not None:
        tagged = sa.select(SweepTag.sweep_id).where(
            SweepTag.sweep_id == Sweep.id, SweepTag.tag == tag
        )
        query = query.where(tagged.exists())
    if cursor is not None:
        created_at, sweep_id = decode_cursor(cursor)
        query = query.where(
            sa.or_(
                Sweep.created_at < created_at,
                sa.and_(Sweep.created_at == created_at, Sweep.id < sweep_id),
            )
        )
    query = query.order_by(Sweep.created_at.desc(), Sweep.id.desc()).limit(limit + 1)
    sweeps = list(session.scalars(query))
    if len(sweeps) <= limit:
        return sweeps, None
    return sweeps[:limit], encode_cursor(sweeps[limit - 1])


def encode_cursor(sweep: Sweep) -> str:
    raw = json.dumps([sweep.created_at.isoformat(), sweep.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, sweep_id = json.loads(raw)
        moment = datetime.fromisoformat(created_at)
    except (binascii.Error, ValueError, TypeError) as error:
        raise InvalidCursor(f"not a cursor from this API: {cursor!r}") from error
    if moment.tzinfo is None or not isinstance(sweep_id, str):
        raise InvalidCursor(f"not a cursor from this API: {cursor!r}")
    return moment, sweep_id


# ---------------------------------------------------------------- trials


def upsert_trial(session: Session, sweep_id: str, event: TrialEvent) -> Trial:
    """Record one trial event; while the sweep is unfinished, refresh its best trial.

    An event without metrics (a retry announced before any report) keeps the last report.
    """
    with _writing(session):
        sweep = _locked(session, sweep_id)
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
        if sweep.status not in TERMINAL_STATUSES:
            best = _best_so_far(session, sweep)
            values["best"] = None if best is None else [best.summary()]
        _update(session, sweep_id, values)
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


def first_objective(spec: Mapping[str, Any]) -> tuple[str, str]:
    """(metric, goal) of a spec document's first objective; val_nll, minimize by default."""
    objectives = spec.get("objectives") or [DEFAULT_OBJECTIVE]
    metric = objectives[0].get("metric") or DEFAULT_OBJECTIVE["metric"]
    goal = objectives[0].get("goal") or ("maximize" if metric.endswith("accuracy") else "minimize")
    return metric, goal


def _best_so_far(session: Session, sweep: Sweep) -> Trial | None:
    metric, goal = first_objective(sweep.spec)
    trials = session.scalars(
        sa.select(Trial)
        .where(Trial.sweep_id == sweep.id, Trial.state != "failed")
        .order_by(Trial.trial_id)
    )
    scored = [(value, trial) for trial in trials if (value := _score(trial, metric)) is not None]
    if not scored:
        return None
    pick = min if goal == "minimize" else max
    return pick(scored, key=lambda item: item[0])[1]


def _score(trial: Trial, metric: str) -> float | None:
    value = (trial.metrics or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def list_trials(session: Session, sweep_id: str) -> list[Trial]:
    _reload(session, sweep_id)
    return list(
        session.scalars(sa.select(Trial).where(Trial.sweep_id == sweep_id).order_by(Trial.trial_id))
    )


def trial_counts(session: Session, sweep_id: str) -> dict[str, int]:
    """How many trials are in each state (states without trials are left out)."""
    _reload(session, sweep_id)
    return counts_by_sweep(session, [sweep_id])[sweep_id]


def counts_by_sweep(session: Session, sweep_ids: Collection[str]) -> dict[str, dict[str, int]]:
    """`trial_counts` of several sweeps in one query (a page of the list, say)."""
    counts: dict[str, dict[str, int]] = {sweep_id: {} for sweep_id in sweep_ids}
    if not counts:
        return counts
    rows = session.execute(
        sa.select(Trial.sweep_id, Trial.state, sa.func.count())
        .where(Trial.sweep_id.in_(list(counts)))
        .group_by(Trial.sweep_id, Trial.state)
    )
    for sweep_id, state, count in rows:
        counts[sweep_id][state] = count
    return counts


# ---------------------------------------------------------------- the driver's outcome


def record_outcome(session: Session, sweep_id: str, outcome: SweepOutcome) -> Sweep:
    """Store what the driver reports at its end: final trials, best, status.

    succeeded/failed become that status (cancelled if a cancel was pending: the sweep was asked
    to stop and the status machine has no way from cancelling to anything else). stopped becomes
    cancelled if a cancel was requested; otherwise the status stays and only the reason is kept,
    so the reconciler can resubmit a sweep whose driver stopped unasked.
    """
    with _writing(session):
        sweep = _locked(session, sweep_id)
        status = sweep.status
        for summary in outcome.trials:
            _write_summary(session, sweep_id, summary)
        # Trials Tune's saved state does not hold were started by a driver killed before Tune
        # saved them: the sweep cannot continue them and ran others in their place. The
        # reconciler may already have marked them interrupted when it failed the killed attempt;
        # now it is known that they will not come back, so the reason says so.
        known = {summary.trial_id for summary in outcome.trials}
        _interrupt_trials(
            session, sweep_id, LOST_TRIAL, keep=known, states=("running", "retrying", "interrupted")
        )
        fields: dict[str, Any] = {
            "reason": outcome.reason,
            "best": json_safe([_as_dict(trial) for trial in outcome.best]) or None,
        }
        for column, value in (
            ("mlflow_experiment_id", outcome.experiment_id),
            ("mlflow_parent_run_id", outcome.parent_run_id),
            ("tracking_uri", outcome.tracking_uri),
        ):
            if value and getattr(sweep, column) is None:
                fields[column] = value
        target = _final_status(sweep, outcome.status)
        if target is None or target == status:
            _update(session, sweep_id, fields)
            return _reload(session, sweep_id)
        if status in ("pending", "submitted") and target != "cancelled":
            _mark_running(session, sweep_id, {})
        if status == "cancelling" and outcome.status != "stopped":
            fields["reason"] = f"cancel requested; the sweep had {outcome.status}: {outcome.reason}"
        return _transition(session, sweep_id, target, fields)


def _interrupt_trials(
    session: Session,
    sweep_id: str,
    error: str,
    keep: Collection[str] = (),
    states: Collection[str] = ("running", "retrying"),
) -> None:
    """Mark the sweep's trials in ``states`` (except ``keep``) interrupted, saying why."""
    unfinished = session.scalars(
        sa.select(Trial).where(Trial.sweep_id == sweep_id, Trial.state.in_(list(states)))
    )
    for trial in unfinished:
        if trial.trial_id not in keep:
            trial.state = "interrupted"
            trial.error = error
            trial.updated_at = utcnow()
    session.flush()


def _final_status(sweep: Sweep, outcome_status: str) -> str | None:
    if outcome_status == "stopped":
        return "cancelled" if sweep.cancel_requested else None
    if outcome_status not in ("succeeded", "failed"):
        raise ValueError(
            f"unknown outcome status {outcome_status!r}; known: succeeded, failed, stopped"
        )
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


def _as_dict(trial: Any) -> dict[str, Any]:
    return asdict(trial) if is_dataclass(trial) else dict(trial)
