"""Queries and the status machine of the store: plain functions on a `Session`.

What the sweep driver writes (trial events, its outcome) is in `service.store.sweep_store`.

Every function that writes is one transaction and commits it (work already pending in the
session is committed first, so that on SQLite the write starts with the lock it needs). Every
write to a sweep, its trials included, bumps the sweep's ``version`` and ``updated_at``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.statuses import SWEEP_STATUSES, TERMINAL
from service.store.database import WRITE_LOCK
from service.store.models import (
    IDEMPOTENCY_KEY_MAX,
    TRIAL_STATES,
    IdempotencyKey,
    Sweep,
    SweepTag,
    Trial,
    new_sweep_id,
    utcnow,
)
from sweeps.records import score

TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"submitted", "cancelled"}),
    "submitted": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "cancelling"}),
    "cancelling": frozenset({"cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset({"pending"}),  # resume
    "cancelled": frozenset({"pending"}),  # resume
}
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
        "ensemble",
        "registered_model",
    }
)
MAX_PAGE = 500


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
def writing(session: Session) -> Iterator[None]:
    if session.in_transaction():
        session.commit()
    session.connection(execution_options={WRITE_LOCK: True})
    try:
        yield
        session.commit()
    except BaseException:
        session.rollback()
        raise


def update_row(
    session: Session, sweep_id: str, values: Mapping[str, Any], *where: Any, bump: bool = True
) -> bool:
    """UPDATE one sweep (if ``where`` holds), bumping its version unless this transaction
    already did (`bump`); True if a row changed."""
    stamps = {"version": Sweep.version + 1, "updated_at": utcnow()} if bump else {}
    statement = (
        sa.update(Sweep)
        .where(Sweep.id == sweep_id, *where)
        .values(**values, **stamps)
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).rowcount == 1


def bump(session: Session, sweep_id: str) -> tuple[int, str, Any]:
    """Bump the sweep's version in this transaction; its new version, status and best.

    Trials written in the transaction take this version: on PostgreSQL the UPDATE holds the
    sweep's row until commit, and SQLite has one writer at a time, so the versions of a sweep's
    trials grow in the order their transactions commit.
    """
    statement = (
        sa.update(Sweep)
        .where(Sweep.id == sweep_id)
        .values(version=Sweep.version + 1, updated_at=utcnow())
        .returning(Sweep.version, Sweep.status, Sweep.best)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(statement).one_or_none()
    if row is None:
        raise SweepNotFound(sweep_id)
    return row[0], row[1], row[2]


def reload(session: Session, sweep_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id, populate_existing=True)
    if sweep is None:
        raise SweepNotFound(sweep_id)
    return sweep


def locked(session: Session, sweep_id: str) -> Sweep:
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
    if target in TERMINAL:
        return {"finished_at": now}
    if target == "pending":  # resume
        return {
            "attempt": Sweep.attempt + 1,
            "cancel_requested": False,
            "reason": None,
            "finished_at": None,
        }
    return {}


def apply_transition(
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
    if not update_row(session, sweep_id, values, Sweep.status.in_(sources)):
        current = session.scalar(sa.select(Sweep.status).where(Sweep.id == sweep_id))
        if current is None:
            raise SweepNotFound(sweep_id)
        raise InvalidTransition(sweep_id, current, target)
    if target in TERMINAL:
        # Nothing runs for a finished sweep: a trial still marked running lost its driver.
        why = fields.get("reason") or "no reason given"
        interrupt_trials(session, sweep_id, f"the sweep became {target} while it ran: {why}")
    return reload(session, sweep_id)


def transition(session: Session, sweep_id: str, to: str, **fields: Any) -> Sweep:
    """Move a sweep to status ``to`` (see `TRANSITIONS`), setting ``fields`` with it.

    submitted_at, started_at and finished_at are set on the transitions into submitted, running
    and a final status; resuming (failed|cancelled → pending) adds one to ``attempt`` and clears
    ``cancel_requested``, ``reason`` and ``finished_at``.
    """
    with writing(session):
        return apply_transition(session, sweep_id, to, fields)


def end_attempt(session: Session, sweep_id: str, reason: str, resubmit: bool) -> Sweep:
    """The sweep's driver ended without a result: the attempt failed, saying why.

    With ``resubmit`` the sweep goes on to pending as its next attempt in the same transaction,
    so no reader (a client following it, the events stream) ever sees the transient failed.
    """
    with writing(session):
        failed = apply_transition(session, sweep_id, "failed", {"reason": reason})
        if not resubmit:
            return failed
        why = f"attempt {failed.attempt + 1} resumes it: {reason}"
        apply_transition(session, sweep_id, "pending", {})
        update_row(session, sweep_id, {"reason": why})
        return reload(session, sweep_id)


def update_sweep(session: Session, sweep_id: str, **fields: Any) -> Sweep:
    """Set fields of a sweep without changing its status."""
    with writing(session):
        if not update_row(session, sweep_id, _settable(fields)):
            raise SweepNotFound(sweep_id)
        return reload(session, sweep_id)


def request_cancel(session: Session, sweep_id: str) -> Sweep:
    """Ask a sweep to stop: one that has not run is cancelled now, a running one is cancelling.

    Asking again is harmless; a sweep that already succeeded or failed cannot be cancelled.
    """
    with writing(session):
        sweep = locked(session, sweep_id)
        if sweep.status in ("cancelling", "cancelled"):
            return sweep
        if sweep.status == "running":
            return apply_transition(
                session, sweep_id, "cancelling", {"cancel_requested": True}, only_from=["running"]
            )
        return apply_transition(
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
    with writing(session):
        return apply_mark_running(session, sweep_id, fields)


def apply_mark_running(session: Session, sweep_id: str, fields: Mapping[str, Any]) -> Sweep:
    sweep = locked(session, sweep_id)
    if sweep.status in ("running", "cancelling"):
        update_row(session, sweep_id, _settable(fields))
        return reload(session, sweep_id)
    if sweep.status == "pending":
        apply_transition(session, sweep_id, "submitted", {})
    return apply_transition(session, sweep_id, "running", fields)


# ---------------------------------------------------------------- creating and reading


def request_hash(document: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a request body: key order and spacing do not matter."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_sweep(
    session: Session,
    spec_document: Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    limits: Mapping[str, Any] | None = None,
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
    with writing(session):
        sweep = Sweep(
            id=new_sweep_id(),
            name=name,
            spec=dict(spec_document),
            limits=None if limits is None else dict(limits),
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
    return reload(session, row.sweep_id)


def get_sweep(session: Session, sweep_id: str) -> Sweep:
    return reload(session, sweep_id)


def changes_since(
    session: Session, sweep_id: str, version: int
) -> tuple[Sweep, list[Trial]] | None:
    """The sweep and the trials written after ``version`` if it changed since, else None.

    For an events stream's poll: its cost follows what changed, not the size of the sweep.
    ``version`` 0 (a new follower) gets every trial.
    """
    sweep = reload(session, sweep_id)
    if sweep.version <= version:
        return None
    query = sa.select(Trial).where(Trial.sweep_id == sweep_id)
    if version > 0:
        # A trial written after the sweep row was read has a higher version: the next poll.
        query = query.where(Trial.version > version, Trial.version <= sweep.version)
    return sweep, list(session.scalars(query.order_by(Trial.version, Trial.trial_id)))


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
    return _pack([sweep.created_at.isoformat(), sweep.id])


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, sweep_id = _unpack(cursor)
        moment = datetime.fromisoformat(created_at)
    except (ValueError, TypeError) as error:
        raise InvalidCursor(f"not a cursor from this API: {cursor!r}") from error
    if moment.tzinfo is None or not isinstance(sweep_id, str):
        raise InvalidCursor(f"not a cursor from this API: {cursor!r}")
    return moment, sweep_id


def _pack(values: list[Any]) -> str:
    """A cursor: the page's last key as URL-safe base64 of JSON, unpadded."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def _unpack(cursor: str) -> Any:
    """`_pack` undone; ValueError (binascii's and JSON's errors are ValueErrors) if it is not
    one."""
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


# ---------------------------------------------------------------- trials


def list_trials(session: Session, sweep_id: str) -> list[Trial]:
    """Every trial of the sweep, by id (for the driver's side and tests; the API pages)."""
    reload(session, sweep_id)
    return list(
        session.scalars(sa.select(Trial).where(Trial.sweep_id == sweep_id).order_by(Trial.trial_id))
    )


# /trials lists by the trial's number in the sweep (``<sweep>-t7-<id>``) unless asked otherwise.
TRIAL_ORDER_DEFAULT = "number"
TRIAL_ORDER_BY_ID = "trial_id"  # kept for the clients that page by it
TRIAL_COLUMN_ORDERS = (TRIAL_ORDER_DEFAULT, TRIAL_ORDER_BY_ID)
METRIC_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,200}$")


def trial_page(
    session: Session,
    sweep_id: str,
    *,
    states: Collection[str] | None = None,
    order_by: str = TRIAL_ORDER_DEFAULT,
    descending: bool = False,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Trial], str | None]:
    """A page of the sweep's trials and the cursor of the next page (None on the last).

    ``order_by`` is ``number`` (the trial's number in the sweep: the order Tune created them
    in), ``trial_id``, or a reported metric (``val_nll``). By number, trials without one (of a
    sweep that started before trials were numbered) come last in either direction, among
    themselves by trial id in the same direction. By a metric, trials without a finite value of
    it come last in either direction, and ties go by trial id. Paging by number or trial id
    visits every trial that exists when the first page is read exactly once, whatever is
    inserted meanwhile; by a metric, a trial whose value changes between two pages can move
    across the cursor (running trials report as they go).
    """
    reload(session, sweep_id)
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    if order_by not in TRIAL_COLUMN_ORDERS and not METRIC_NAME.fullmatch(order_by):
        raise ValueError(
            f"order_by must be number, trial_id or a metric name (letters, digits, _ . : / -), "
            f"got {order_by!r}"
        )
    query = sa.select(Trial).where(Trial.sweep_id == sweep_id)
    if states is not None:
        unknown = set(states) - set(TRIAL_STATES)
        if unknown:
            raise ValueError(
                f"unknown trial state {', '.join(sorted(unknown))}; "
                f"known: {', '.join(TRIAL_STATES)}"
            )
        query = query.where(Trial.state.in_(list(states)))
    order = (order_by, "desc" if descending else "asc")
    after = None if cursor is None else _decode_trial_cursor(cursor, order)
    if order_by == TRIAL_ORDER_DEFAULT:
        trials = _by_number(session, query, after, descending, limit + 1)
    elif order_by == TRIAL_ORDER_BY_ID:
        if after is not None:
            query = query.where(_beyond_id(after[1], descending))
        by_id = Trial.trial_id.desc() if descending else Trial.trial_id
        trials = list(session.scalars(query.order_by(by_id).limit(limit + 1)))
    else:
        value = Trial.metrics[order_by].as_float()
        if after is not None:
            query = query.where(_after(value, *after, descending))
        ranked = value.desc() if descending else value.asc()
        query = query.order_by(value.is_(None), ranked, Trial.trial_id).limit(limit + 1)
        trials = list(session.scalars(query))
    if len(trials) <= limit:
        return trials, None
    last = trials[limit - 1]
    at = (
        last.number
        if order_by == TRIAL_ORDER_DEFAULT
        else None
        if order_by == TRIAL_ORDER_BY_ID
        else score(last, order_by)
    )
    return trials[:limit], _encode_trial_cursor(order, at, last.trial_id)


def _by_number(
    session: Session,
    query: Any,
    after: tuple[float | None, str] | None,
    descending: bool,
    count: int,
) -> list[Trial]:
    """Up to ``count`` trials after ``after`` by (number, trial id), the unnumbered last: the
    numbered ones, then as many unnumbered ones as the page has room for. Two queries rather
    than one ORDER BY number IS NULL, so that each is a range of ix_trials_sweep_number."""
    found: list[Trial] = []
    if after is None or after[0] is not None:
        numbered = query.where(Trial.number.is_not(None))
        if after is not None:
            # A row value, not OR: PostgreSQL and SQLite then start the index range at the
            # cursor instead of filtering every row before it.
            key, at = sa.tuple_(Trial.number, Trial.trial_id), sa.tuple_(*after)
            numbered = numbered.where(key < at if descending else key > at)
        keys = (
            (Trial.number.desc(), Trial.trial_id.desc())
            if descending
            else (Trial.number, Trial.trial_id)
        )
        found = list(session.scalars(numbered.order_by(*keys).limit(count)))
    if len(found) < count:
        unnumbered = query.where(Trial.number.is_(None))
        if after is not None and after[0] is None:
            unnumbered = unnumbered.where(_beyond_id(after[1], descending))
        by_id = Trial.trial_id.desc() if descending else Trial.trial_id
        found += session.scalars(unnumbered.order_by(by_id).limit(count - len(found)))
    return found


def _beyond_id(after_id: str, descending: bool) -> Any:
    return Trial.trial_id < after_id if descending else Trial.trial_id > after_id


def _after(value: Any, after: float | None, after_id: str, descending: bool) -> Any:
    """Rows after (``after``, ``after_id``) in the order: value (NULLs last), then trial id."""
    if after is None:
        return sa.and_(value.is_(None), Trial.trial_id > after_id)
    beyond = value < after if descending else value > after
    return sa.or_(beyond, sa.and_(value == after, Trial.trial_id > after_id), value.is_(None))


def _encode_trial_cursor(order: tuple[str, str], value: float | None, trial_id: str) -> str:
    return _pack([*order, value, trial_id])


def _decode_trial_cursor(cursor: str, order: tuple[str, str]) -> tuple[float | None, str]:
    try:
        order_by, direction, value, trial_id = _unpack(cursor)
    except (ValueError, TypeError) as error:
        raise InvalidCursor(f"not a trials cursor from this API: {cursor!r}") from error
    if not isinstance(trial_id, str) or not (
        value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    ):
        raise InvalidCursor(f"not a trials cursor from this API: {cursor!r}")
    if (order_by, direction) != order:
        raise InvalidCursor(
            f"this cursor pages trials ordered by {order_by} {direction}, not by "
            f"{order[0]} {order[1]}: ask with the order of the page it came from"
        )
    if order_by == TRIAL_ORDER_DEFAULT:
        if value is not None and not isinstance(value, int):
            raise InvalidCursor(f"not a trials cursor from this API: {cursor!r}")
        return value, trial_id
    return (None if value is None else float(value)), trial_id


def trial_counts(session: Session, sweep_id: str) -> dict[str, int]:
    """How many trials are in each state (states without trials are left out)."""
    reload(session, sweep_id)
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


def interrupt_trials(
    session: Session,
    sweep_id: str,
    error: str,
    keep: Collection[str] = (),
    states: Collection[str] = ("running", "retrying"),
) -> None:
    """Mark the sweep's trials in ``states`` (except ``keep``) interrupted, saying why.

    Called in a transaction that has bumped the sweep's version: the trials take it.
    """
    version = session.scalar(sa.select(Sweep.version).where(Sweep.id == sweep_id))
    unfinished = session.scalars(
        sa.select(Trial).where(Trial.sweep_id == sweep_id, Trial.state.in_(list(states)))
    )
    for trial in unfinished:
        if trial.trial_id not in keep:
            trial.state = "interrupted"
            trial.error = error
            trial.updated_at = utcnow()
            trial.version = version
    session.flush()
