"""The audit trail: every state-changing call, who made it, on what, when and from where.

Records are written by the routes after their change committed (`record`), and read by admins a
page at a time, newest first (`page`). What goes in ``detail`` is what the call changed (a
sweep's name, a budget's changes, a user's role); a token never does: a token's record names
its id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.access import Caller
from service.store.models import AuditRecord
from service.store.paging import InvalidCursor, check_limit, pack, unpack
from service.store.transactions import writing

ACTIONS: tuple[str, ...] = (
    "sweep.create",
    "sweep.cancel",
    "sweep.resume",
    "sweep.extend",
    "sweep.budget",
    "code.upload",
    "user.create",
    "user.quotas",
    "token.issue",
    "token.revoke",
)


def record(
    session: Session,
    caller: Caller,
    action: str,
    target: str | None,
    client: str | None,
    detail: Mapping[str, Any] | None = None,
) -> AuditRecord:
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; known: {', '.join(ACTIONS)}")
    entry = AuditRecord(
        actor=caller.name,
        action=action,
        target=target,
        client=client,
        detail={**(detail or {}), "token_id": caller.token_id},
    )
    with writing(session):
        session.add(entry)
    return entry


def page(
    session: Session,
    *,
    limit: int,
    cursor: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
) -> tuple[list[AuditRecord], str | None]:
    """A page of records, newest first, and the next page's cursor (None on the last)."""
    check_limit(limit)
    query = sa.select(AuditRecord)
    if actor is not None:
        query = query.where(AuditRecord.actor == actor)
    if action is not None:
        query = query.where(AuditRecord.action == action)
    if target is not None:
        query = query.where(AuditRecord.target == target)
    if cursor is not None:
        try:
            (before,) = unpack(cursor)
        except (ValueError, TypeError) as error:
            raise InvalidCursor(f"not a cursor from this API: {cursor!r}") from error
        if not isinstance(before, int):
            raise InvalidCursor(f"not a cursor from this API: {cursor!r}")
        query = query.where(AuditRecord.id < before)
    rows = list(session.scalars(query.order_by(AuditRecord.id.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], pack([rows[limit - 1].id])
