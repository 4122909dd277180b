"""One write, one transaction: how the store's modules open a write and read a sweep's row in it.

Every function that writes is one transaction and commits it (work already pending in the
session is committed first, so that on SQLite the write starts with the lock it needs). Every
write to a sweep, its trials included, bumps the sweep's ``version`` and ``updated_at``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.store.database import WRITE_LOCK
from service.store.models import Sweep, utcnow


class SweepNotFound(LookupError):
    def __init__(self, sweep_id: str) -> None:
        super().__init__(f"no sweep {sweep_id!r}")
        self.sweep_id = sweep_id


@contextmanager
def writing(session: Session) -> Iterator[None]:
    """One write transaction, committed at the end (rolled back on an error)."""
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
    # An UPDATE's result is a CursorResult, which has the row count; Session.execute says Result.
    return cast(sa.CursorResult[Any], session.execute(statement)).rowcount == 1


class Bumped(NamedTuple):
    """A sweep's row as `bump` leaves it: what a trial write needs to know of it."""

    version: int
    status: str
    best: list[dict[str, Any]] | None
    best_basis: str | None


def bump(session: Session, sweep_id: str) -> Bumped:
    """Bump the sweep's version in this transaction; its new version, status and best.

    Trials written in the transaction take this version: on PostgreSQL the UPDATE holds the
    sweep's row until commit, and SQLite has one writer at a time, so the versions of a sweep's
    trials grow in the order their transactions commit.
    """
    statement = (
        sa.update(Sweep)
        .where(Sweep.id == sweep_id)
        .values(version=Sweep.version + 1, updated_at=utcnow())
        .returning(Sweep.version, Sweep.status, Sweep.best, Sweep.best_basis)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(statement).one_or_none()
    if row is None:
        raise SweepNotFound(sweep_id)
    return Bumped(*row)


def reload(session: Session, sweep_id: str) -> Sweep:
    """The sweep as stored now (the session's copy refreshed)."""
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
