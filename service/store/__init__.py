"""The sweep service's durable store: SQLAlchemy models, Alembic migrations, queries, the
status machine (`repository`), and the driver's side of it (`sweep_store`)."""

from service.store.database import make_engine, session_factory, upgrade
from service.store.models import IdempotencyKey, Sweep, SweepTag, Trial
from service.store.repository import (
    TRANSITIONS,
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    SweepNotFound,
    changes_since,
    create_sweep,
    get_sweep,
    list_sweeps,
    list_trials,
    mark_running,
    request_cancel,
    transition,
    trial_counts,
    update_sweep,
)
from service.store.sweep_store import DatabaseSweepStore, record_outcome, upsert_trial

__all__ = [
    "TRANSITIONS",
    "DatabaseSweepStore",
    "IdempotencyConflict",
    "IdempotencyKey",
    "InvalidCursor",
    "InvalidTransition",
    "Sweep",
    "SweepNotFound",
    "SweepTag",
    "Trial",
    "changes_since",
    "create_sweep",
    "get_sweep",
    "list_sweeps",
    "list_trials",
    "make_engine",
    "mark_running",
    "record_outcome",
    "request_cancel",
    "session_factory",
    "transition",
    "trial_counts",
    "update_sweep",
    "upgrade",
    "upsert_trial",
]
