"""Trial queries: a sweep's trials listed, paged in an order, counted by state, and the one
write the status machine makes on them (marking the unfinished ones interrupted)."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.store.models import Sweep, Trial, utcnow
from service.store.paging import InvalidCursor, check_limit, pack, unpack
from service.store.transactions import SweepNotFound, reload
from sweeps.records import TRIAL_STATES, score


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
    check_limit(limit)
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
    return pack([*order, value, trial_id])


def _decode_trial_cursor(cursor: str, order: tuple[str, str]) -> tuple[float | None, str]:
    try:
        order_by, direction, value, trial_id = unpack(cursor)
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
    if version is None:
        raise SweepNotFound(sweep_id)
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
