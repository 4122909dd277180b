"""The service's tables: sweeps, their tags and trials, idempotency keys; users, their tokens
and the audit trail.

Portable across SQLite and PostgreSQL: JSON columns are `sa.JSON`, times are UTC and come back
timezone-aware from both (SQLite stores them naive; `UTCDateTime` puts the zone back).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from service.access import BOOTSTRAP_ADMIN, ROLES
from service.statuses import SWEEP_STATUSES
from sweeps.records import TRIAL_STATES

IDEMPOTENCY_KEY_MAX = 200

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_sweep_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store takes timezone-aware times")
        value = value.astimezone(timezone.utc)
        # SQLite compares times as text: one zone, no suffix, keeps that order right.
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_sweep_id)
    name: Mapped[str] = mapped_column(sa.String(200))
    # Who submitted it (`service.access`): only they and admins see it.
    owner: Mapped[str] = mapped_column(
        sa.ForeignKey("users.name"), default=BOOTSTRAP_ADMIN, server_default=BOOTSTRAP_ADMIN
    )
    spec: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    # The caps and data root it was admitted under (sweeps.Limits.to_document); None for sweeps
    # stored before they were kept, whose drivers use their own environment's.
    limits: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    tags: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(sa.Text)
    attempt: Mapped[int] = mapped_column(default=1)
    submission_id: Mapped[str | None] = mapped_column(sa.String(200))
    mlflow_experiment_id: Mapped[str | None] = mapped_column(sa.String(200))
    mlflow_parent_run_id: Mapped[str | None] = mapped_column(sa.String(200))
    tracking_uri: Mapped[str | None] = mapped_column(sa.Text)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    best: Mapped[list[dict[str, Any]] | None] = mapped_column(sa.JSON)
    # What ``best`` is (`service.statuses.BEST_BASES`); None for a sweep whose best was stored
    # before the basis was kept and that has not run since.
    best_basis: Mapped[str | None] = mapped_column(sa.String(64))
    # The sweep ensemble's summary (sweeps.ensemble.SweepEnsemble.summary), once it finished.
    ensemble: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    # The best trial's model in the registry (SweepOutcome.registered_model), once registered.
    registered_model: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    # What its warm start seeded and skipped (sweeps.warm_start.WarmStartReport.to_dict), once
    # its driver started; None for a sweep that names no earlier sweeps.
    warm_start: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    # Each change of its budget after it was submitted, oldest first: {"at", "kind" (extend or
    # change), "changes": {field: [before, after]}}.
    budget_changes: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list)
    # The trials it may run at once now, under its owner's quotas and its fair share of the
    # cluster (`service.fair_share`), and why; None: only its own budget limits it.
    allowance: Mapped[int | None] = mapped_column(sa.Integer)
    allowance_reason: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    submitted_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(default=1)

    tag_rows: Mapped[list[SweepTag]] = relationship(
        back_populates="sweep", cascade="all, delete-orphan"
    )

    __table_args__ = (
        sa.CheckConstraint(f"status IN ({_in(SWEEP_STATUSES)})", name="status"),
        sa.Index("ix_sweeps_status_created", "status", "created_at", "id"),
        sa.Index("ix_sweeps_created", "created_at", "id"),
        sa.Index("ix_sweeps_owner_created", "owner", "created_at", "id"),
    )

    def __repr__(self) -> str:
        return f"Sweep(id={self.id!r}, name={self.name!r}, status={self.status!r})"


class SweepTag(Base):
    """One row per tag, so that filtering by tag is a plain join on both databases."""

    __tablename__ = "sweep_tags"

    sweep_id: Mapped[str] = mapped_column(
        sa.ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(sa.String(200), primary_key=True)

    sweep: Mapped[Sweep] = relationship(back_populates="tag_rows")

    __table_args__ = (sa.Index("ix_sweep_tags_tag", "tag"),)


class Trial(Base):
    __tablename__ = "trials"

    sweep_id: Mapped[str] = mapped_column(
        sa.ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True
    )
    trial_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(500))
    # The trial's number in its sweep, from 1, as its name carries it (`sweeps.records.
    # trial_number`: ``<sweep>-t7-<id>``, MLflow's run ``<sweep> #7``); None for a name without
    # one (a sweep that started before trials were numbered). /trials lists by it.
    number: Mapped[int | None] = mapped_column(sa.Integer)
    state: Mapped[str] = mapped_column(sa.String(16))
    params: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    epoch: Mapped[int] = mapped_column(default=0)
    mlflow_run_id: Mapped[str | None] = mapped_column(sa.String(200))
    error: Mapped[str | None] = mapped_column(sa.Text)
    # Where it runs (sweeps.placement.reported): node_id, node_ip, gpu_ids, device. None is
    # SQL NULL, so that a report without it keeps the stored one (COALESCE in the upsert).
    placement: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON(none_as_null=True))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The sweep's first objective as a loss (lower is better; negated when maximised), or None
    # when the trial failed or has no finite value: the best so far is one indexed query.
    objective: Mapped[float | None] = mapped_column(sa.Float)
    # The sweep's version when this row was last written: readers following a sweep (the
    # events stream) ask only for the trials written since the version they saw.
    version: Mapped[int] = mapped_column(default=0, server_default="0")

    __table_args__ = (
        sa.CheckConstraint(f"state IN ({_in(TRIAL_STATES)})", name="state"),
        sa.Index("ix_trials_sweep_state_trial", "sweep_id", "state", "trial_id"),
        sa.Index("ix_trials_sweep_objective", "sweep_id", "objective", "trial_id"),
        sa.Index("ix_trials_sweep_version", "sweep_id", "version"),
        sa.Index("ix_trials_sweep_number", "sweep_id", "number", "trial_id"),
    )

    def summary(self) -> dict[str, Any]:
        """The same shape as `sweeps.records.TrialSummary`, as stored in `Sweep.best`."""
        return {key: getattr(self, key) for key in SUMMARY_KEYS}


SUMMARY_KEYS = ("trial_id", "name", "state", "params", "metrics", "mlflow_run_id", "error")


class IdempotencyKey(Base):
    """A key is its user's: two users sending the same key do not meet."""

    __tablename__ = "idempotency_keys"

    owner: Mapped[str] = mapped_column(sa.ForeignKey("users.name"), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(IDEMPOTENCY_KEY_MAX), primary_key=True)
    sweep_id: Mapped[str] = mapped_column(
        sa.ForeignKey("sweeps.id", ondelete="CASCADE"), index=True
    )
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    sweep: Mapped[Sweep] = relationship()


class User(Base):
    __tablename__ = "users"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    role: Mapped[str] = mapped_column(sa.String(16))
    # The quotas set for this user (`service.quotas.QUOTA_NAMES`); one not set is the setting's.
    quotas: Mapped[dict[str, int]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (sa.CheckConstraint(f"role IN ({_in(ROLES)})", name="role"),)


class ApiToken(Base):
    """A user's token, kept as its keyed digest (`service.access.token_digest`), never itself."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    user_name: Mapped[str] = mapped_column(
        sa.ForeignKey("users.name", ondelete="CASCADE"), index=True
    )
    digest: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AuditRecord(Base):
    """One state-changing call: who, what, on what, when, from where. Never a token or secret."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(sa.String(64))
    action: Mapped[str] = mapped_column(sa.String(64))
    target: Mapped[str | None] = mapped_column(sa.String(200))
    client: Mapped[str | None] = mapped_column(sa.String(100))
    detail: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)

    __table_args__ = (sa.Index("ix_audit_actor_id", "actor", "id"),)
