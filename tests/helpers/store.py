"""Stores for the tests: PostgreSQL schemas of their own, sweeps put in a status, and the
trial events, records, summaries and outcomes a driver hands its store.

PostgreSQL comes from GRADREG_TEST_POSTGRES_URL, else the local server (trust auth, database
`test`). `postgres_schema` makes a fresh schema `gradreg_<random>`, reached through the URL's
search_path option, so the migrations create their tables there and parallel runs never meet;
it is dropped afterwards. Without a reachable server it fails the test, saying why.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.store import status_machine, sweep_queries, trial_queries
from service.store.models import Sweep
from sweeps import SweepOutcome, SweepRecord, TrialEvent, TrialSummary

POSTGRES_CANDIDATES = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
)


@functools.cache
def postgres_url() -> sa.URL | None:
    """The first PostgreSQL URL that answers, or None."""
    configured = os.environ.get("GRADREG_TEST_POSTGRES_URL")
    for candidate in [configured] if configured else POSTGRES_CANDIDATES:
        engine = sa.create_engine(candidate, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            return sa.make_url(candidate)
        except sa.exc.OperationalError:
            continue
        finally:
            engine.dispose()
    return None


def postgres_schema() -> Iterator[sa.URL]:
    base = postgres_url()
    if base is None:
        # The store must work on PostgreSQL; a missing server fails the run instead of hiding.
        pytest.fail(
            f"no PostgreSQL server answers at {', '.join(POSTGRES_CANDIDATES)}; start one or "
            "set GRADREG_TEST_POSTGRES_URL"
        )
    schema = f"gradreg_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        yield base.update_query_dict({"options": f"-csearch_path={schema}"})
    finally:
        with admin.connect() as connection:
            # and the Optuna studies of the sweeps that ran on it (sweeps.study)
            for name in (schema, f"{schema}_optuna"):
                connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


# A way into every status, from pending.
PATHS = {
    "queued": ["queued"],
    "pending": [],
    "submitted": ["submitted"],
    "running": ["submitted", "running"],
    "cancelling": ["submitted", "running", "cancelling"],
    "succeeded": ["submitted", "running", "succeeded"],
    "failed": ["submitted", "failed"],
    "cancelled": ["cancelled"],
}


def spec_document(name: str = "demo", tags: list[str] | None = None, **extra: Any) -> dict:
    return {"name": name, "tags": tags or [], "dataset": {"name": "digits"}, **extra}


def new_sweep(sessions: sessionmaker[Session], status: str = "pending", **document: Any) -> str:
    with sessions() as session:
        sweep, _ = sweep_queries.create_sweep(session, spec_document(**document))
        for step in PATHS[status]:
            status_machine.transition(session, sweep.id, step)
        return sweep.id


def status_of(sessions: sessionmaker[Session], sweep_id: str) -> Sweep:
    with sessions() as session:
        return sweep_queries.get_sweep(session, sweep_id)


def trial_states(
    sessions: sessionmaker[Session], sweep_id: str
) -> dict[str, tuple[str, str | None]]:
    """Each trial's (state, error), by trial id."""
    with sessions() as session:
        return {
            t.trial_id: (t.state, t.error) for t in trial_queries.list_trials(session, sweep_id)
        }


def event(trial_id: str, state: str = "running", epoch: int = 1, **metrics: float) -> TrialEvent:
    return TrialEvent(
        sweep="s",
        trial_id=trial_id,
        trial_name=f"trial_{trial_id}",
        state=state,
        params={"lr": 0.1 * (1 + int(trial_id[-1]))},
        metrics={"epoch": float(epoch), **metrics},
        epoch=epoch,
        mlflow_run_id=f"run-{trial_id}",
    )


def record(sweep_id: str) -> SweepRecord:
    return SweepRecord(
        sweep=sweep_id,
        spec={},
        tracking_uri="sqlite:///mlflow.db",
        experiment_id="7",
        parent_run_id="parent-1",
        data_root=None,
    )


def summary(trial_id: str, state: str, val_nll: float) -> TrialSummary:
    return TrialSummary(
        trial_id=trial_id,
        name=f"trial_{trial_id}",
        state=state,
        params={"lr": 0.01},
        metrics={"epoch": 3.0, "val_nll": val_nll},
        mlflow_run_id=f"run-{trial_id}",
    )


def outcome(sweep_id: str, status: str, trials: list[TrialSummary], **extra: Any) -> SweepOutcome:
    return SweepOutcome(
        sweep=sweep_id,
        status=status,
        reason=extra.pop("reason", f"sweep {status}"),
        objectives=[{"metric": "val_nll", "goal": "minimize"}],
        trials=trials,
        best=extra.pop("best", trials[:1]),
        experiment_id="7",
        parent_run_id="parent-1",
        tracking_uri="sqlite:///mlflow.db",
        experiment_path="/tmp/x",
    )


def old_sweep(
    connection: sa.Connection,
    sweep_id: str,
    status: str,
    spec: dict[str, Any] | None = None,
    best: list[dict[str, Any]] | None = None,
) -> None:
    """A sweep row as a store at an earlier revision holds it (the models have moved on)."""
    connection.execute(
        sa.text(
            "INSERT INTO sweeps (id, name, spec, tags, status, attempt, cancel_requested, best,"
            " created_at, updated_at, version) VALUES (:id, 'old', :spec, '[]', :status, 1,"
            " false, :best, :now, :now, 1)"
        ),
        {
            "id": sweep_id,
            "spec": json.dumps(spec or {}),
            "status": status,
            "best": None if best is None else json.dumps(best),
            "now": "2026-01-01 00:00:00",
        },
    )
