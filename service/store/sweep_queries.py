"""Sweep queries: a sweep created (once per idempotency key), read, listed a page at a time, and
what changed in it since a version (for the events stream)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.access import BOOTSTRAP_ADMIN, Caller
from service.quotas import QuotaExceeded, Quotas
from service.statuses import HOLDING_A_SLOT, QUEUED, SWEEP_STATUSES
from service.store import best
from service.store.models import (
    IDEMPOTENCY_KEY_MAX,
    IdempotencyKey,
    Sweep,
    SweepTag,
    Trial,
    User,
    new_sweep_id,
)
from service.store.paging import InvalidCursor, check_limit, pack, unpack
from service.store.transactions import SweepNotFound, reload, writing
from sweeps import SpecIssue, SweepSpec


class IdempotencyConflict(ValueError):
    def __init__(self, key: str, sweep_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used with a different request "
            f"(it created sweep {sweep_id})"
        )
        self.key = key
        self.sweep_id = sweep_id


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
    owner: str = BOOTSTRAP_ADMIN,
    quotas: Quotas | None = None,
) -> tuple[Sweep, bool]:
    """Store a new sweep of ``owner``'s: pending, or queued when ``quotas`` (the owner's) has no
    room for another active sweep; with a key the owner used before, that key's sweep instead.

    Returns (sweep, created). The same key with a different body raises `IdempotencyConflict`;
    a queue already at the owner's ``queued_sweeps`` quota raises `QuotaExceeded`.
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
        existing = _keyed_sweep(session, owner, idempotency_key, digest)
        if existing is not None:
            return existing, False
    with writing(session):
        status, reason = ("pending", None) if quotas is None else admission(session, owner, quotas)
        sweep = Sweep(
            id=new_sweep_id(),
            name=name,
            owner=owner,
            spec=dict(spec_document),
            limits=None if limits is None else dict(limits),
            tags=tags,
            status=status,
            reason=reason,
            best_basis=best.basis_while_running(len(spec_document.get("objectives") or [])),
            tag_rows=[SweepTag(tag=tag) for tag in dict.fromkeys(tags)],
        )
        session.add(sweep)
        if idempotency_key is not None:
            session.add(
                IdempotencyKey(owner=owner, key=idempotency_key, sweep=sweep, request_hash=digest)
            )
        try:
            session.flush()
        except IntegrityError:
            # Another request with this key committed first: answer with its sweep.
            session.rollback()
            existing = _keyed_sweep(session, owner, idempotency_key, digest)
            if existing is None:
                raise
            return existing, False
    return sweep, True


def admission(session: Session, owner: str, quotas: Quotas) -> tuple[str, str | None]:
    """The status a new sweep of ``owner``'s starts in, and why, in the transaction that
    stores it: pending while the owner holds fewer active sweeps than their quota and has none
    queued (submission order), else queued. `QuotaExceeded` when the queue is full too."""
    # Two submissions of one owner's at once: the second waits here for the first's commit
    # (PostgreSQL; SQLite's writer lock already orders them).
    session.execute(sa.select(User.name).where(User.name == owner).with_for_update())
    counts = owner_counts(session, owner)
    holding = sum(counts.get(status, 0) for status in HOLDING_A_SLOT)
    queued = counts.get(QUEUED, 0)
    if holding < quotas.active_sweeps and queued == 0:
        return "pending", None
    if queued >= quotas.queued_sweeps:
        raise QuotaExceeded(
            owner,
            "queued_sweeps",
            quotas.queued_sweeps,
            f"already has {queued} sweep(s) queued behind {holding} active",
        )
    return QUEUED, queued_reason(holding, quotas.active_sweeps)


def queued_reason(holding: int, quota: int) -> str:
    return (
        f"queued: its owner has {holding} active sweep(s), their active_sweeps quota is {quota}; "
        "it starts when an earlier one ends"
    )


def owner_counts(session: Session, owner: str) -> dict[str, int]:
    """How many sweeps ``owner`` has in each status."""
    rows = session.execute(
        sa.select(Sweep.status, sa.func.count()).where(Sweep.owner == owner).group_by(Sweep.status)
    )
    return {status: count for status, count in rows.all()}


def _keyed_sweep(session: Session, owner: str, key: str | None, digest: str) -> Sweep | None:
    if key is None:
        return None
    row = session.get(IdempotencyKey, (owner, key), populate_existing=True)
    if row is None:
        return None
    if row.request_hash != digest:
        raise IdempotencyConflict(key, row.sweep_id)
    return reload(session, row.sweep_id)


def get_sweep(session: Session, sweep_id: str, caller: Caller | None = None) -> Sweep:
    """The sweep; for a ``caller`` who may not see it (`Caller.may_see`), `SweepNotFound`, the
    same answer as for an id that does not exist."""
    sweep = reload(session, sweep_id)
    if caller is not None and not caller.may_see(sweep.owner):
        raise SweepNotFound(sweep_id)
    return sweep


def warm_start_issues(session: Session, spec: SweepSpec, caller: Caller) -> list[SpecIssue]:
    """The sweeps a spec's ``search.warm_start`` names that this store cannot seed it from:
    none of that id that the caller may see, or one whose driver never started (it has no
    trials to give)."""
    if spec.search.warm_start is None:
        return []
    issues = []
    for index, sweep_id in enumerate(spec.search.warm_start.sweeps):
        where = ("search", "warm_start", "sweeps", index)
        sweep = session.get(Sweep, sweep_id)
        if sweep is None or not caller.may_see(sweep.owner):
            issues.append(SpecIssue(where, f"no sweep {sweep_id!r} in this service"))
        elif sweep.started_at is None:
            issues.append(
                SpecIssue(where, f"sweep {sweep_id!r} is {sweep.status} and has not started")
            )
    return issues


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
    owner: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Sweep], str | None]:
    """A page of sweeps (``owner``'s only, if given), newest first, and the cursor of the next
    page (None on the last)."""
    check_limit(limit)
    query = sa.select(Sweep)
    if owner is not None:
        query = query.where(Sweep.owner == owner)
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
    return pack([sweep.created_at.isoformat(), sweep.id])


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created_at, sweep_id = unpack(cursor)
        moment = datetime.fromisoformat(created_at)
    except (ValueError, TypeError) as error:
        raise InvalidCursor(f"not a cursor from this API: {cursor!r}") from error
    if moment.tzinfo is None or not isinstance(sweep_id, str):
        raise InvalidCursor(f"not a cursor from this API: {cursor!r}")
    return moment, sweep_id
