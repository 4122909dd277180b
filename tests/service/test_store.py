"""The store on real databases: SQLite files and PostgreSQL schemas (see conftest)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import multiprocessing
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.access import BOOTSTRAP_ADMIN
from service.statuses import SWEEP_STATUSES, TERMINAL
from service.store import (
    paging,
    status_machine,
    sweep_queries,
    transactions,
    trial_queries,
    user_queries,
)
from service.store.database import current_revision, head_revision, make_engine, upgrade
from service.store.database import session_factory as make_sessions
from service.store.models import Base, IdempotencyKey, Sweep, Trial
from service.store.sweep_store import (
    DatabaseSweepStore,
    objectives_of,
    upsert_trial,
    upsert_trials,
)
from sweeps import TrialEvent, load_spec_file
from sweeps.records import LOST_TRIAL, trial_name
from tests.helpers.api import routes_app
from tests.helpers.store import (
    event,
    new_sweep,
    old_sweep,
    outcome,
    record,
    spec_document,
    status_of,
    summary,
    trial_states,
)

EXAMPLE = Path(__file__).parents[2] / "sweeps" / "examples" / "digits-vl-uniform.yaml"
ALLOWED = {
    ("queued", "pending"),  # its owner's quota has room
    ("queued", "cancelled"),
    ("pending", "queued"),  # its owner's quota was lowered
    ("pending", "submitted"),
    ("pending", "cancelled"),
    ("submitted", "running"),
    ("submitted", "failed"),
    ("submitted", "cancelled"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "cancelling"),
    ("cancelling", "cancelled"),
    ("failed", "pending"),
    ("cancelled", "pending"),
    ("succeeded", "pending"),  # extend
}


def is_postgres(engine: sa.Engine) -> bool:
    return engine.dialect.name == "postgresql"


def race(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` for i < count in as many threads, released together; results or errors."""
    barrier = threading.Barrier(count)

    def run(index: int) -> Any:
        barrier.wait()
        try:
            return work(index)
        except Exception as error:
            return error

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


# ---------------------------------------------------------------- migrations and engines


def test_upgrade_creates_the_tables_and_running_it_again_changes_nothing(engine, session_factory):
    tables = set(sa.inspect(engine).get_table_names())
    assert {"sweeps", "sweep_tags", "trials", "idempotency_keys", "alembic_version"} <= tables
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        if is_postgres(engine):  # the test's own schema, not public
            schema = connection.scalar(sa.text("SELECT current_schema()"))
            assert schema.startswith("gradreg_")
            assert "sweeps" not in sa.inspect(connection).get_table_names(schema="public")
        indexes = {index["name"] for index in sa.inspect(connection).get_indexes("sweeps")}
    assert {"ix_sweeps_created", "ix_sweeps_status_created"} <= indexes

    sweep_id = new_sweep(session_factory)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert status_of(session_factory, sweep_id).status == "pending"


def test_migration_matches_the_models(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_upgrade_accepts_a_url(store_url):
    upgrade(store_url)
    engine = make_engine(store_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_sqlite_engine_uses_wal_and_waits_for_locks(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def write_from_another_process(url: str, sweep_id: str, worker: int) -> None:
    engine = make_engine(url)
    sessions = make_sessions(engine)
    try:
        for index in range(15):
            with sessions() as session:
                sweep_queries.create_sweep(session, spec_document(f"w{worker}-{index}"))
                trial = event(f"w{worker}-{index}", val_nll=float(worker + index))
                upsert_trial(session, sweep_id, trial)
    finally:
        engine.dispose()


def test_several_processes_write_one_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_sessions(engine)
    try:
        sweep_id = new_sweep(sessions, "running")
        context = multiprocessing.get_context("fork")
        workers = [
            context.Process(target=write_from_another_process, args=(url, sweep_id, worker))
            for worker in range(3)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert [worker.exitcode for worker in workers] == [0, 0, 0]
        with sessions() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(Sweep)) == 46
            assert trial_queries.trial_counts(session, sweep_id) == {"running": 45}
            assert sweep_queries.get_sweep(session, sweep_id).version == 3 + 45
            assert best_id(session, sweep_id) == "w0-0"
    finally:
        engine.dispose()


# ---------------------------------------------------------------- status machine


def test_every_allowed_transition_applies_and_stamps_times(session_factory):
    for source, target in sorted(ALLOWED):
        sweep_id = new_sweep(session_factory, source)
        with session_factory() as session:
            before = sweep_queries.get_sweep(session, sweep_id)
            version, attempt = before.version, before.attempt
            after = status_machine.transition(session, sweep_id, target, reason=f"to {target}")
        assert (source, after.status) == (source, target)
        assert after.version == version + 1
        assert after.updated_at >= before.updated_at
        if target == "submitted":
            assert after.submitted_at is not None
        if target == "running":
            assert after.started_at is not None
        if target in TERMINAL:
            assert after.finished_at is not None
            assert (after.allowance, after.allowance_reason) == (0, status_machine.ENDED)
        if target == "pending" and source in TERMINAL:
            assert after.attempt == attempt + 1
            assert after.finished_at is None
            assert (after.allowance, after.allowance_reason) == (None, None)
        assert after.reason == f"to {target}"
        assert after.created_at.tzinfo is not None


def test_forbidden_transitions_raise_and_change_nothing(session_factory):
    tried = 0
    for source in SWEEP_STATUSES:
        sweep_id = new_sweep(session_factory, source)
        version = status_of(session_factory, sweep_id).version
        for target in SWEEP_STATUSES:
            if (source, target) in ALLOWED:
                continue
            with (
                session_factory() as session,
                pytest.raises(status_machine.InvalidTransition) as caught,
            ):
                status_machine.transition(session, sweep_id, target)
            error = caught.value
            assert (error.current, error.target) == (source, target)
            assert error.allowed == sorted(t for s, t in ALLOWED if s == source)
            assert source in str(error) and target in str(error)
            tried += 1
        after = status_of(session_factory, sweep_id)
        assert (after.status, after.version) == (source, version)
    assert tried == len(SWEEP_STATUSES) ** 2 - len(ALLOWED)


def test_transition_rejects_unknown_sweeps_statuses_and_fields(session_factory):
    sweep_id = new_sweep(session_factory)
    with session_factory() as session:
        with pytest.raises(transactions.SweepNotFound):
            status_machine.transition(session, "0" * 32, "submitted")
        with pytest.raises(ValueError, match="unknown sweep status 'done'"):
            status_machine.transition(session, sweep_id, "done")
        with pytest.raises(ValueError, match="cannot set attempt"):
            status_machine.transition(session, sweep_id, "submitted", attempt=7)
    assert status_of(session_factory, sweep_id).status == "pending"


def test_resume_bumps_the_attempt_and_clears_the_cancel(session_factory):
    sweep_id = new_sweep(session_factory, "running")
    with session_factory() as session:
        status_machine.request_cancel(session, sweep_id)
        status_machine.transition(session, sweep_id, "cancelled", reason="user")
        resumed = status_machine.transition(session, sweep_id, "pending")
        assert (resumed.attempt, resumed.cancel_requested, resumed.reason) == (2, False, None)
        for step in ["submitted", "failed", "pending"]:
            resumed = status_machine.transition(session, sweep_id, step)
        assert resumed.attempt == 3


def test_a_resume_takes_a_failed_or_cancelled_sweep_and_an_extension_any_that_ended(
    session_factory,
):
    succeeded = new_sweep(session_factory, "succeeded")
    running = new_sweep(session_factory, "running")
    raised = {"max_trials": [2, 9]}
    with session_factory() as session:
        with pytest.raises(status_machine.InvalidTransition, match="only a sweep that is cancel"):
            status_machine.resume(session, succeeded)
        spec = {**sweep_queries.get_sweep(session, succeeded).spec, "budget": {"max_trials": 9}}
        with pytest.raises(status_machine.InvalidTransition, match="is running"):
            status_machine.extend(session, running, spec, raised, "more")
        extended = status_machine.extend(session, succeeded, spec, raised, "extended")
    assert (extended.status, extended.attempt, extended.finished_at) == ("pending", 2, None)
    assert extended.reason == "extended"
    assert status_of(session_factory, succeeded).spec["budget"] == {"max_trials": 9}
    [change] = status_of(session_factory, succeeded).budget_changes
    assert (change["kind"], change["changes"]) == ("extend", raised)
    assert status_of(session_factory, running).status == "running"
    for ended in ("failed", "cancelled"):
        sweep_id = new_sweep(session_factory, ended)
        with session_factory() as session:
            again = status_machine.extend(session, sweep_id, spec, raised, "extended")
        assert (again.status, again.attempt) == ("pending", 2)


def test_a_budget_changes_while_the_sweep_has_not_ended_and_the_change_is_kept(session_factory):
    running, ended = new_sweep(session_factory, "running"), new_sweep(session_factory, "failed")
    lowered = {"max_concurrent_trials": [2, 1]}
    with session_factory() as session:
        before = sweep_queries.get_sweep(session, running)
        version, spec = before.version, {**before.spec, "budget": {"max_concurrent_trials": 1}}
        changed = status_machine.change_budget(session, running, spec, lowered)
        assert (changed.status, changed.version) == ("running", version + 1)
        with pytest.raises(status_machine.InvalidBudgetChange, match="extend it"):
            status_machine.change_budget(session, ended, spec, lowered)
    assert status_of(session_factory, running).spec["budget"] == {"max_concurrent_trials": 1}
    assert [c["changes"] for c in status_of(session_factory, running).budget_changes] == [lowered]
    assert status_of(session_factory, ended).budget_changes == []


def test_two_racing_writers_cannot_both_win(engine, session_factory):
    rounds = 6 if is_postgres(engine) else 3
    for _ in range(rounds):
        sweep_id = new_sweep(session_factory, "running")

        def move(index: int, sweep_id: str = sweep_id) -> str:
            with session_factory() as session:
                return status_machine.transition(
                    session, sweep_id, ["succeeded", "cancelling"][index]
                ).status

        results = race(2, move)
        winners = [result for result in results if isinstance(result, str)]
        losers = [result for result in results if not isinstance(result, str)]
        assert len(winners) == 1 and len(losers) == 1
        assert isinstance(losers[0], status_machine.InvalidTransition)
        assert status_of(session_factory, sweep_id).status == winners[0]


def test_many_racing_submitters_exactly_one_wins(engine, session_factory):
    sweep_id = new_sweep(session_factory)
    threads = 12 if is_postgres(engine) else 6

    def submit(index: int) -> str:
        with session_factory() as session:
            return status_machine.transition(
                session, sweep_id, "submitted", submission_id=f"job-{index}"
            ).id

    results = race(threads, submit)
    assert sum(isinstance(result, str) for result in results) == 1
    assert all(isinstance(result, str | status_machine.InvalidTransition) for result in results), (
        results
    )
    sweep = status_of(session_factory, sweep_id)
    winner = results.index(sweep_id)
    assert (sweep.submission_id, sweep.version) == (f"job-{winner}", 2)


def test_request_cancel_depends_on_where_the_sweep_is(session_factory):
    with session_factory() as session:
        for status, expected in [
            ("pending", "cancelled"),
            ("submitted", "cancelled"),
            ("running", "cancelling"),
        ]:
            sweep_id = new_sweep(session_factory, status)
            sweep = status_machine.request_cancel(session, sweep_id)
            assert (sweep.status, sweep.cancel_requested) == (expected, True)
            version = sweep.version
            again = status_machine.request_cancel(session, sweep_id)  # asking twice changes nothing
            assert (again.status, again.version) == (expected, version)
        for status in ["succeeded", "failed"]:
            sweep_id = new_sweep(session_factory, status)
            with pytest.raises(status_machine.InvalidTransition):
                status_machine.request_cancel(session, sweep_id)
        with pytest.raises(transactions.SweepNotFound):
            status_machine.request_cancel(session, "f" * 32)


# ---------------------------------------------------------------- creating, idempotency


def test_create_stores_the_document_tags_and_a_fresh_id(session_factory):
    document = spec_document("alpha", ["a", "b", "a"], description="x")
    with session_factory() as session:
        sweep, created = sweep_queries.create_sweep(session, document)
        other, _ = sweep_queries.create_sweep(session, document)
    assert created and other.id != sweep.id
    stored = status_of(session_factory, sweep.id)
    assert len(stored.id) == 32 and int(stored.id, 16) >= 0
    assert (stored.name, stored.spec, stored.tags) == ("alpha", document, ["a", "b", "a"])
    assert (stored.status, stored.attempt, stored.version, stored.cancel_requested) == (
        "pending",
        1,
        1,
        False,
    )
    assert stored.best is None and stored.created_at.utcoffset() == timedelta(0)


def test_same_key_same_body_returns_the_first_sweep(session_factory):
    with session_factory() as session:
        first, created = sweep_queries.create_sweep(
            session, spec_document(tags=["x"]), idempotency_key="k1"
        )
        # Key order does not change the body's hash.
        reordered = dict(reversed(list(spec_document(tags=["x"]).items())))
        second, created_again = sweep_queries.create_sweep(session, reordered, idempotency_key="k1")
        assert (created, created_again, second.id) == (True, False, first.id)
        with pytest.raises(sweep_queries.IdempotencyConflict, match="k1"):
            sweep_queries.create_sweep(session, spec_document("other"), idempotency_key="k1")
        with pytest.raises(ValueError, match="1 to 200"):
            sweep_queries.create_sweep(session, spec_document(), idempotency_key="k" * 201)
        assert session.scalar(sa.select(sa.func.count()).select_from(Sweep)) == 1


def test_one_key_posted_concurrently_creates_one_sweep(engine, session_factory):
    threads = 50 if is_postgres(engine) else 10
    busy = make_engine(engine.url, pool_size=threads, max_overflow=0)
    sessions = make_sessions(busy)
    try:

        def post(_: int) -> tuple[str, bool]:
            with sessions() as session:
                sweep, created = sweep_queries.create_sweep(
                    session, spec_document(), idempotency_key="same-key"
                )
                return sweep.id, created

        results = race(threads, post)
    finally:
        busy.dispose()
    assert all(isinstance(result, tuple) for result in results), results
    assert len({sweep_id for sweep_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    with session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Sweep)) == 1
        assert session.scalar(sa.select(sa.func.count()).select_from(IdempotencyKey)) == 1


def test_distinct_keys_posted_concurrently_create_one_sweep_each(engine, session_factory):
    posts = 200 if is_postgres(engine) else 40
    workers = 25
    busy = make_engine(engine.url, pool_size=workers, max_overflow=0)
    sessions = make_sessions(busy)

    def post(index: int) -> str:
        with sessions() as session:
            sweep, created = sweep_queries.create_sweep(
                session, spec_document(f"s{index}"), idempotency_key=f"key-{index}"
            )
            assert created
            return sweep.id

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            ids = list(pool.map(post, range(posts)))
    finally:
        busy.dispose()
    assert len(set(ids)) == posts
    with session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Sweep)) == posts


# ---------------------------------------------------------------- listing


def page_through(session: Session, **filters: Any) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        sweeps, cursor = sweep_queries.list_sweeps(session, limit=10, cursor=cursor, **filters)
        pages.append([sweep.id for sweep in sweeps])
        if cursor is None:
            return pages


def flat(pages: list[list[str]]) -> list[str]:
    return [sweep_id for page in pages for sweep_id in page]


def test_cursor_pagination_is_newest_first_without_gaps_or_repeats(session_factory):
    ids = [new_sweep(session_factory, tags=["even" if i % 2 == 0 else "odd"]) for i in range(25)]
    with session_factory() as session:
        pages = page_through(session)
        assert [len(page) for page in pages] == [10, 10, 5]
        assert flat(pages) == ids[::-1]

        for index in range(0, 25, 3):
            status_machine.transition(session, ids[index], "submitted")
        submitted = [ids[index] for index in range(0, 25, 3)][::-1]
        assert flat(page_through(session, status="submitted")) == submitted
        assert flat(page_through(session, status=["submitted", "pending"])) == ids[::-1]
        assert flat(page_through(session, tag="even")) == ids[::2][::-1]
        assert flat(page_through(session, tag="odd", status="submitted")) == [
            sweep_id for sweep_id in submitted if ids.index(sweep_id) % 2 == 1
        ]
        assert sweep_queries.list_sweeps(session, tag="missing") == ([], None)
        assert sweep_queries.list_sweeps(session, status="failed") == ([], None)


def test_pagination_breaks_ties_in_creation_time_by_id(session_factory):
    ids = [new_sweep(session_factory) for _ in range(25)]
    with session_factory() as session:
        first = sweep_queries.get_sweep(session, ids[0]).created_at
        moments = [first, first + timedelta(seconds=1)]
        for index, sweep_id in enumerate(ids):
            session.execute(
                sa.update(Sweep).where(Sweep.id == sweep_id).values(created_at=moments[index % 2])
            )
        session.commit()
        listed = flat(page_through(session))
        expected = sorted(ids, key=lambda i: (moments[ids.index(i) % 2], i), reverse=True)
        assert listed == expected


def test_list_rejects_bad_cursors_limits_and_statuses(session_factory):
    new_sweep(session_factory)
    with session_factory() as session:
        for cursor in ["not a cursor", "bm90IGpzb24", "WyIyMDI0LTAxLTAxIiwgIngiXQ"]:
            with pytest.raises(paging.InvalidCursor):
                sweep_queries.list_sweeps(session, cursor=cursor)
        with pytest.raises(ValueError, match="limit"):
            sweep_queries.list_sweeps(session, limit=0)
        with pytest.raises(ValueError, match="unknown sweep status"):
            sweep_queries.list_sweeps(session, status="done")


# ---------------------------------------------------------------- trials and best


def best_id(session: Session, sweep_id: str) -> str | None:
    best = sweep_queries.get_sweep(session, sweep_id).best
    return None if best is None else best[0]["trial_id"]


def test_upsert_trial_inserts_then_updates_and_tracks_the_lowest(session_factory):
    objectives = [{"metric": "val_nll", "goal": "minimize"}]
    sweep_id = new_sweep(session_factory, "running", objectives=objectives)
    with session_factory() as session:
        version = sweep_queries.get_sweep(session, sweep_id).version
        upsert_trial(session, sweep_id, event("t1", val_nll=0.5))
        assert best_id(session, sweep_id) == "t1"
        upsert_trial(session, sweep_id, event("t2", val_nll=0.7))
        assert best_id(session, sweep_id) == "t1"
        upsert_trial(session, sweep_id, event("t2", epoch=2, val_nll=0.3))
        assert best_id(session, sweep_id) == "t2"
        upsert_trial(session, sweep_id, event("t3", val_nll=math.nan))
        upsert_trial(session, sweep_id, event("t4"))  # no objective reported yet
        assert best_id(session, sweep_id) == "t2"
        assert sweep_queries.get_sweep(session, sweep_id).version == version + 5

        # A failed trial is not the best any more, whatever its last value.
        failed = TrialEvent(**{**asdict(event("t2", "failed", 2, val_nll=0.3)), "error": "OOM"})
        upsert_trial(session, sweep_id, failed)
        assert best_id(session, sweep_id) == "t1"
        best = sweep_queries.get_sweep(session, sweep_id).best
        assert best == [
            {
                "trial_id": "t1",
                "name": "trial_t1",
                "state": "running",
                "params": {"lr": 0.2},
                "metrics": {"epoch": 1.0, "val_nll": 0.5},
                "mlflow_run_id": "run-t1",
                "error": None,
            }
        ]

        # Params stay as first seen; an event without metrics keeps the last report.
        retry = TrialEvent("s", "t1", "trial_t1", "retrying", {"lr": 9.0}, {}, 0, None, "lost")
        trial = upsert_trial(session, sweep_id, retry)
        assert (trial.params, trial.metrics["val_nll"], trial.epoch) == ({"lr": 0.2}, 0.5, 1)
        assert (trial.state, trial.error, trial.mlflow_run_id) == ("retrying", "lost", "run-t1")

        trials = trial_queries.list_trials(session, sweep_id)
        assert [t.trial_id for t in trials] == ["t1", "t2", "t3", "t4"]
        assert trials[1].metrics == {"epoch": 2.0, "val_nll": 0.3} and trials[1].epoch == 2
        assert trials[2].metrics == {"epoch": 1.0, "val_nll": None}  # NaN: JSON has none
        assert trial_queries.trial_counts(session, sweep_id) == {
            "retrying": 1,
            "failed": 1,
            "running": 2,
        }


def test_best_follows_a_maximised_objective(session_factory):
    objectives = [{"metric": "val_accuracy", "goal": "maximize"}]
    sweep_id = new_sweep(session_factory, "running", objectives=objectives)
    with session_factory() as session:
        for trial_id, accuracy in [("t1", 0.8), ("t2", 0.95), ("t3", 0.9)]:
            upsert_trial(session, sweep_id, event(trial_id, val_accuracy=accuracy))
        assert best_id(session, sweep_id) == "t2"


def test_best_defaults_to_val_nll_and_freezes_once_finished(session_factory):
    sweep_id = new_sweep(session_factory, "running")  # no objectives in the document
    with session_factory() as session:
        upsert_trial(session, sweep_id, event("t1", val_nll=2.0, val_accuracy=0.9))
        upsert_trial(session, sweep_id, event("t2", val_nll=1.0, val_accuracy=0.1))
        assert best_id(session, sweep_id) == "t2"
        status_machine.transition(session, sweep_id, "succeeded", best=[{"trial_id": "final"}])
        upsert_trial(session, sweep_id, event("t3", val_nll=0.1))
        assert best_id(session, sweep_id) == "final"
        # What ran when it finished lost its driver; a late event is still recorded.
        assert trial_queries.trial_counts(session, sweep_id) == {"interrupted": 2, "running": 1}
        first = trial_queries.list_trials(session, sweep_id)[0]
        assert first.error == "the sweep became succeeded while it ran: no reason given"
        with pytest.raises(transactions.SweepNotFound):
            upsert_trial(session, "0" * 32, event("t1"))


def test_changes_since_reports_only_newer_versions(session_factory):
    sweep_id = new_sweep(session_factory, "running")
    with session_factory() as session:
        version = sweep_queries.get_sweep(session, sweep_id).version
        assert sweep_queries.changes_since(session, sweep_id, version) is None
        upsert_trial(session, sweep_id, event("t1", val_nll=1.0))
        changed = sweep_queries.changes_since(session, sweep_id, version)
        assert changed is not None and changed[0].version == version + 1


# ---------------------------------------------------------------- the driver's store


def create_from_example(session_factory: sessionmaker[Session]) -> tuple[str, Any]:
    spec = load_spec_file(EXAMPLE)
    with session_factory() as session:
        sweep, _ = sweep_queries.create_sweep(session, spec.to_document())
        status_machine.transition(session, sweep.id, "submitted", submission_id="raysubmit_1")
    return sweep.id, spec


def test_driver_store_round_trip_ending_in_a_cancel(engine, session_factory):
    store = DatabaseSweepStore(engine)
    sweep_id, spec = create_from_example(session_factory)
    assert store.load_spec(sweep_id) == spec

    store.record_start(sweep_id, record(sweep_id))
    sweep = status_of(session_factory, sweep_id)
    assert (sweep.status, sweep.mlflow_experiment_id, sweep.mlflow_parent_run_id) == (
        "running",
        "7",
        "parent-1",
    )
    assert sweep.tracking_uri == "sqlite:///mlflow.db" and sweep.started_at is not None

    store.record_trial(sweep_id, event("t1", val_nll=0.4))
    store.record_trial(sweep_id, event("t2", val_nll=0.6))
    assert not store.stop_requested(sweep_id)
    with session_factory() as session:
        status_machine.request_cancel(session, sweep_id)
    assert store.stop_requested(sweep_id)

    trials = [summary("t1", "succeeded", 0.4), summary("t2", "interrupted", 0.5)]
    store.record_outcome(sweep_id, outcome(sweep_id, "stopped", trials, reason="stop asked"))
    with session_factory() as session:
        sweep = sweep_queries.get_sweep(session, sweep_id)
        assert (sweep.status, sweep.reason) == ("cancelled", "stop asked")
        assert sweep.finished_at is not None
        assert sweep.best == [asdict(trials[0])]
        trials = trial_queries.list_trials(session, sweep_id)
        states = {t.trial_id: (t.state, t.metrics["val_nll"]) for t in trials}
        assert states == {"t1": ("succeeded", 0.4), "t2": ("interrupted", 0.5)}


def test_driver_store_success_failure_and_unasked_stop(engine, session_factory):
    store = DatabaseSweepStore(engine)
    for final in ["succeeded", "failed"]:
        sweep_id, _ = create_from_example(session_factory)
        store.record_start(sweep_id, record(sweep_id))
        best = [summary("a", "succeeded", 0.2), summary("b", "succeeded", 0.3)]  # a Pareto set
        store.record_outcome(sweep_id, outcome(sweep_id, final, best, best=best))
        sweep = status_of(session_factory, sweep_id)
        assert (sweep.status, sweep.reason) == (final, f"sweep {final}")
        assert [trial["trial_id"] for trial in sweep.best] == ["a", "b"]

    # Stopped without being asked (the driver was killed): the status stays for the reconciler.
    sweep_id, _ = create_from_example(session_factory)
    store.record_start(sweep_id, record(sweep_id))
    store.record_outcome(sweep_id, outcome(sweep_id, "stopped", [summary("a", "interrupted", 1)]))
    sweep = status_of(session_factory, sweep_id)
    assert (sweep.status, sweep.reason, sweep.finished_at) == ("running", "sweep stopped", None)


def test_a_trial_the_driver_lost_is_marked_interrupted_with_why(engine, session_factory):
    store = DatabaseSweepStore(engine)
    sweep_id, _ = create_from_example(session_factory)
    store.record_start(sweep_id, record(sweep_id))
    store.record_trial(sweep_id, event("t1", val_nll=0.4))
    store.record_trial(sweep_id, event("t2"))  # started; the driver died before Tune saved it
    store.record_trial(sweep_id, event("t3", state="retrying"))  # the same, mid-retry
    store.record_trial(sweep_id, event("t4", state="succeeded", val_nll=0.3))

    # The resumed driver's Tune state holds t1 and t4 and a new t5, never t2 or t3.
    trials = [summary(t, "succeeded", 0.4) for t in ("t1", "t4", "t5")]
    store.record_outcome(sweep_id, outcome(sweep_id, "succeeded", trials))
    lost = ("interrupted", LOST_TRIAL)
    assert trial_states(session_factory, sweep_id) == {
        "t1": ("succeeded", None),
        "t2": lost,
        "t3": lost,
        "t4": ("succeeded", None),
        "t5": ("succeeded", None),
    }
    assert status_of(session_factory, sweep_id).status == "succeeded"


def test_a_lost_trial_of_a_failed_attempt_is_relabelled_lost_when_the_next_one_ends(
    engine, session_factory
):
    store = DatabaseSweepStore(engine)
    sweep_id, _ = create_from_example(session_factory)
    store.record_start(sweep_id, record(sweep_id))
    store.record_trial(sweep_id, event("t1", state="succeeded", val_nll=0.4))
    store.record_trial(sweep_id, event("t2"))  # running when the driver was killed
    with session_factory() as session:  # what the reconciler does with a killed driver
        status_machine.end_attempt(session, sweep_id, "driver job FAILED", resubmit=True)
    killed = ("interrupted", "the sweep became failed while it ran: driver job FAILED")
    assert trial_states(session_factory, sweep_id)["t2"] == killed
    store.record_start(sweep_id, record(sweep_id))

    trials = [summary(t, "succeeded", 0.4) for t in ("t1", "t3")]  # Tune never saved t2
    store.record_outcome(sweep_id, outcome(sweep_id, "succeeded", trials))
    assert trial_states(session_factory, sweep_id) == {
        "t1": ("succeeded", None),
        "t2": ("interrupted", LOST_TRIAL),
        "t3": ("succeeded", None),
    }


def test_driver_store_started_by_hand_and_finishing_while_cancelling(engine, session_factory):
    store = DatabaseSweepStore(engine)
    with session_factory() as session:
        sweep, _ = sweep_queries.create_sweep(session, load_spec_file(EXAMPLE).to_document())
    store.record_start(sweep.id, record(sweep.id))  # pending, never submitted
    started = status_of(session_factory, sweep.id)
    assert started.status == "running" and started.submitted_at is not None

    store.record_start(sweep.id, record(sweep.id))  # a restarted driver: no error, no change
    assert status_of(session_factory, sweep.id).status == "running"

    with session_factory() as session:
        status_machine.request_cancel(session, sweep.id)
    store.record_outcome(sweep.id, outcome(sweep.id, "succeeded", [summary("a", "succeeded", 1)]))
    finished = status_of(session_factory, sweep.id)
    assert finished.status == "cancelled" and "succeeded" in finished.reason

    with pytest.raises(transactions.SweepNotFound):
        store.stop_requested("0" * 32)
    with pytest.raises(status_machine.InvalidTransition):  # a finished sweep cannot start again
        store.record_start(sweep.id, record(sweep.id))


def test_trial_rows_belong_to_their_sweep(session_factory):
    first, second = new_sweep(session_factory, "running"), new_sweep(session_factory, "running")
    with session_factory() as session:
        upsert_trial(session, first, event("t1", val_nll=1.0))
        upsert_trial(session, second, event("t1", val_nll=2.0))
        assert session.scalar(sa.select(sa.func.count()).select_from(Trial)) == 2
        assert trial_queries.list_trials(session, first)[0].metrics["val_nll"] == 1.0
        assert trial_queries.trial_counts(session, second) == {"running": 1}


def test_a_store_at_0001_upgrades_and_keeps_its_sweeps(store_url):
    engine = make_engine(store_url)
    try:
        upgrade(engine, "0001")
        assert "ensemble" not in {c["name"] for c in sa.inspect(engine).get_columns("sweeps")}
        with engine.begin() as connection:  # a sweep written before the ensemble column
            connection.execute(
                sa.text(
                    "INSERT INTO sweeps (id, name, spec, tags, status, attempt, cancel_requested,"
                    " created_at, updated_at, version) VALUES ('s1', 'old', '{}', '[]',"
                    " 'succeeded', 1, false, :now, :now, 1)"
                ),
                {"now": "2026-01-01 00:00:00"},
            )
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        with make_sessions(engine)() as session:
            old = sweep_queries.get_sweep(session, "s1")
            assert (old.name, old.ensemble, old.registered_model) == ("old", None, None)
    finally:
        engine.dispose()


def test_the_outcome_stores_the_sweep_ensemble(engine, session_factory):
    store = DatabaseSweepStore(engine)
    sweep_id, _ = create_from_example(session_factory)
    store.record_start(sweep_id, record(sweep_id))
    ensemble = {
        "selection": "top",
        "size": 2,
        "members": [{"trial_id": "a", "name": "trial_a", "mlflow_run_id": "run-a", "weight": 1.0}],
        "metrics": {"test_nll": 0.3, "test_ece_ts": math.nan},
        "candidates": 1,
        "skipped": [],
    }
    trials = [summary("a", "succeeded", 0.2)]
    store.record_outcome(
        sweep_id,
        dataclasses.replace(outcome(sweep_id, "succeeded", trials), ensemble=ensemble),
    )
    stored = status_of(session_factory, sweep_id).ensemble
    assert stored["members"] == ensemble["members"]
    assert stored["metrics"] == {"test_nll": 0.3, "test_ece_ts": None}  # JSON has no NaN
    assert status_of(session_factory, sweep_id).registered_model is None


def test_the_outcome_stores_the_registered_model(engine, session_factory):
    store = DatabaseSweepStore(engine)
    sweep_id, _ = create_from_example(session_factory)
    store.record_start(sweep_id, record(sweep_id))
    registered = {"name": "digits", "version": "3", "uri": "models:/digits/3"}
    trials = [summary("a", "succeeded", 0.2)]
    done = dataclasses.replace(outcome(sweep_id, "succeeded", trials), registered_model=registered)
    store.record_outcome(sweep_id, done)
    assert status_of(session_factory, sweep_id).registered_model == registered


def test_a_trial_keeps_where_it_runs_until_a_report_says_otherwise(session_factory):
    sweep_id = new_sweep(session_factory, "running")
    here = {"node_id": "n1", "node_ip": "10.0.0.2", "gpu_ids": ["0"], "device": "cpu"}
    moved = {**here, "node_id": "n2", "node_ip": "10.0.0.3"}
    with session_factory() as session:
        started = upsert_trial(session, sweep_id, event("t1", val_nll=0.5))
        assert started.placement is None  # not known before the trial's first report
        placed = dataclasses.replace(event("t1", epoch=2, val_nll=0.4), placement=here)
        assert upsert_trial(session, sweep_id, placed).placement == here
        # A report without it (the upsert) and an event without metrics (read, then write)
        # keep it; a trial restored on another node reports its new place.
        assert upsert_trial(session, sweep_id, event("t1", epoch=3)).placement == here
        retry = TrialEvent("s", "t1", "trial_t1", "retrying", {}, {}, 0, None, "node died")
        assert upsert_trial(session, sweep_id, retry).placement == here
        again = dataclasses.replace(event("t1", epoch=4, val_nll=0.3), placement=moved)
        assert upsert_trial(session, sweep_id, again).placement == moved


# ---------------------------------------------------------------- trials by number


def numbered(number: int | None, trial_id: str) -> TrialEvent:
    """A report of a trial named as the driver names it (`sweeps.records.trial_name`)."""
    name = trial_name("demo", number, trial_id)
    return TrialEvent("s", trial_id, name, "running", {}, {"val_nll": 0.5}, 1, f"run-{trial_id}")


def tune_id(rng: random.Random) -> str:
    """A trial id as Tune makes them: eight random hex digits."""
    return f"{rng.getrandbits(32):08x}"


def pages(session: Session, sweep_id: str, limit: int, **query: Any) -> list[str]:
    """Every trial id, following the cursor from page to page."""
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = trial_queries.trial_page(
            session, sweep_id, limit=limit, cursor=cursor, **query
        )
        assert len(page) <= limit
        seen.extend(t.trial_id for t in page)
        if cursor is None:
            return seen


def test_trials_are_listed_by_their_number_the_unnumbered_last(session_factory):
    """Tune's trial ids are random hex, so by id t5 came before t1. By number, in both
    directions and at every page size, with trials of a sweep from before trials were numbered
    last, among themselves by id."""
    sweep_id = new_sweep(session_factory, "running")
    rng = random.Random(5)
    ids = {number: tune_id(rng) for number in range(1, 13)}
    twin = tune_id(rng)  # a second trial numbered 7: its id breaks the tie
    unnumbered = sorted(tune_id(rng) for _ in range(2))
    events = [numbered(n, t) for n, t in ids.items()] + [numbered(7, twin)]
    events += [numbered(None, t) for t in unnumbered]
    rng.shuffle(events)
    objectives = objectives_of({})
    with session_factory() as session:
        # reports (one upsert) and events without metrics (read, then write) both number
        upsert_trials(session, sweep_id, events[:8], objectives)
        for late in events[8:]:
            upsert_trials(session, sweep_id, [dataclasses.replace(late, metrics={})], objectives)
        stored = {t.trial_id: t.number for t in trial_queries.list_trials(session, sweep_id)}
        expected = {t: n for n, t in ids.items()} | {twin: 7} | dict.fromkeys(unnumbered)
        assert stored == expected
        by_number = sorted([*ids.items(), (7, twin)])
        ascending = [t for _, t in by_number] + unnumbered
        descending = [t for _, t in reversed(by_number)] + unnumbered[::-1]
        assert ascending != sorted(stored)  # the ids' order is not the numbers'
        for limit in (1, 2, 3, 5, 50):
            assert pages(session, sweep_id, limit) == ascending, limit
            assert pages(session, sweep_id, limit, descending=True) == descending, limit
            done = pages(session, sweep_id, limit, states=["running"], order_by="number")
            assert done == ascending, limit
        # the order by trial id is kept for the clients that page by it
        assert pages(session, sweep_id, 4, order_by="trial_id") == sorted(stored)
        _, cursor = trial_queries.trial_page(session, sweep_id, limit=2)
        with pytest.raises(paging.InvalidCursor, match="ordered by number asc"):
            trial_queries.trial_page(session, sweep_id, limit=2, order_by="trial_id", cursor=cursor)


MAX_CONCURRENT_BATCHES = 20


def test_paging_by_number_visits_every_trial_once_under_concurrent_inserts(session_factory):
    sweep_id = new_sweep(session_factory, "running")
    objectives = objectives_of({})
    rng = random.Random(7)
    numbers = itertools.count(1)

    def add(count: int) -> list[str]:
        events = [numbered(next(numbers), tune_id(rng)) for _ in range(count)]
        with session_factory() as session:
            upsert_trials(session, sweep_id, events, objectives)
        return [e.trial_id for e in events]

    first = add(60)
    stop = threading.Event()
    inserted: list[str] = []

    def insert() -> None:
        # A bounded number of inserts: a writer faster than the pages (PostgreSQL under load)
        # would otherwise keep the last page out of reach for ever.
        for _ in range(MAX_CONCURRENT_BATCHES):
            if stop.is_set():
                return
            inserted.extend(add(3))

    writer = threading.Thread(target=insert)
    writer.start()
    try:
        seen: list[str] = []
        cursor = None
        with session_factory() as session:
            while True:
                page, cursor = trial_queries.trial_page(session, sweep_id, limit=7, cursor=cursor)
                seen.extend(t.trial_id for t in page)
                time.sleep(0.005)  # let the writer in between pages
                if cursor is None:
                    break
    finally:
        stop.set()
        writer.join()
    assert inserted, "nothing was inserted while paging: the test saw no concurrency"
    assert len(seen) == len(set(seen)), "a trial came twice"
    # every trial that existed, in order of number, then those inserted meanwhile, in order
    assert seen[: len(first)] == first
    assert seen[len(first) :] == inserted[: len(seen) - len(first)]


def test_a_store_at_0004_numbers_its_trials_from_their_names(store_url):
    engine = make_engine(store_url)
    try:
        upgrade(engine, "0004")
        sessions = make_sessions(engine)
        sweep_id = "s1"
        with engine.begin() as connection:  # trials written before the number column
            old_sweep(connection, sweep_id, "running")
            for trial_id, name in [
                ("b0", "demo-t10-b0"),
                ("a1", "demo-t2-a1"),
                ("c2", "demo-c2"),  # a sweep that started before trials were numbered
                ("00", "my-sweep-2-t1-00"),  # dashes in the sweep's name
            ]:
                connection.execute(
                    sa.text(
                        "INSERT INTO trials (sweep_id, trial_id, name, state, params, metrics,"
                        " epoch, updated_at, version) VALUES (:sweep, :trial, :name, 'running',"
                        " '{}', '{}', 0, :now, 1)"
                    ),
                    {"sweep": sweep_id, "trial": trial_id, "name": name, "now": "2026-01-01"},
                )
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        with sessions() as session:
            numbers = {t.trial_id: t.number for t in trial_queries.list_trials(session, sweep_id)}
            assert numbers == {"b0": 10, "a1": 2, "c2": None, "00": 1}
            assert pages(session, sweep_id, 2) == ["00", "a1", "b0", "c2"]
    finally:
        engine.dispose()


def test_the_trials_route_lists_by_number_and_shows_it(session_factory):
    app = routes_app(session_factory, "secret")
    api = TestClient(app, headers={"Authorization": "Bearer secret"})
    sweep_id = new_sweep(session_factory, "running")
    ids = {10: "0000000a", 1: "ffffffff", 5: "80000000", 3: "c0000000"}
    with session_factory() as session:
        events = [numbered(n, t) for n, t in ids.items()]
        upsert_trials(session, sweep_id, events, objectives_of({}))
    first = api.get(f"/v1/sweeps/{sweep_id}/trials", params={"limit": 3}).json()
    assert [(t["number"], t["name"]) for t in first["items"]] == [
        (1, "demo-t1-ffffffff"),
        (3, "demo-t3-c0000000"),
        (5, "demo-t5-80000000"),
    ]
    rest = api.get(f"/v1/sweeps/{sweep_id}/trials", params={"cursor": first["next_cursor"]})
    assert [t["number"] for t in rest.json()["items"]] == [10]
    by_id = api.get(f"/v1/sweeps/{sweep_id}/trials", params={"order_by": "trial_id"}).json()
    assert [t["number"] for t in by_id["items"]] == [10, 5, 3, 1]


# ---------------------------------------------------------------- users and owners (0008)


def test_a_store_from_before_users_upgrades_and_its_sweeps_are_the_bootstrap_admins(store_url):
    engine = make_engine(store_url)
    try:
        upgrade(engine, "0007")
        with engine.begin() as connection:
            old_sweep(connection, "kept", "succeeded")
            old_sweep(connection, "running", "running")
            connection.execute(
                sa.text(
                    "INSERT INTO trials (sweep_id, trial_id, name, state, params, metrics, epoch,"
                    " updated_at, version) VALUES ('kept', 't1', 'kept-t1-x', 'succeeded', '{}',"
                    " '{}', 3, '2026-01-01 00:00:00', 1)"
                )
            )
            connection.execute(
                sa.text(
                    "INSERT INTO idempotency_keys (key, sweep_id, request_hash, created_at)"
                    " VALUES ('k', 'kept', :hash, '2026-01-01 00:00:00')"
                ),
                {"hash": "0" * 64},
            )
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        sessions = make_sessions(engine)
        with sessions() as session:
            owners = dict(session.execute(sa.select(Sweep.id, Sweep.owner)).all())
            assert owners == {"kept": BOOTSTRAP_ADMIN, "running": BOOTSTRAP_ADMIN}
            admin = user_queries.get_user(session, BOOTSTRAP_ADMIN)
            assert admin.role == "admin"
            # Rebuilding the sweeps table (SQLite) cascaded to none of its rows' children.
            assert trial_queries.trial_counts(session, "kept") == {"succeeded": 1}
            key = session.get(IdempotencyKey, (BOOTSTRAP_ADMIN, "k"))
            assert key is not None and key.sweep_id == "kept"
        with sessions() as session:  # the new status is allowed by the rebuilt constraint
            status_machine.transition(session, "kept", "pending")
            status_machine.transition(session, "kept", "queued", reason="quota")
        with engine.begin() as connection, pytest.raises(sa.exc.IntegrityError):
            connection.execute(sa.text("UPDATE sweeps SET status = 'lost' WHERE id = 'kept'"))
    finally:
        engine.dispose()
