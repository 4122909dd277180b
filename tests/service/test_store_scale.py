"""What keeps the store's cost flat as a sweep grows: the incremental best, pages of trials,
trial versions for followers, and batched writes from the driver (a killed one included)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from service.store import paging, status_machine, sweep_queries, transactions, trial_queries
from service.store.database import make_engine, upgrade
from service.store.database import session_factory as make_sessions
from service.store.models import Trial
from service.store.sweep_store import (
    DatabaseSweepStore,
    objectives_of,
    record_outcome,
    upsert_trials,
)
from sweeps import DriverOptions, TrialEvent, run_stored
from sweeps.records import LOST_TRIAL, TrialSummary, best_trials
from sweeps.statefiles import STATES_FILE
from tests.helpers import poll_until
from tests.helpers.api import routes_app
from tests.helpers.specs import digits_spec
from tests.helpers.store import new_sweep, outcome

STATES = ["running", "retrying", "failed", "succeeded", "stopped", "interrupted"]
TRIAL_IDS = [f"t{i}" for i in range(6)]


def report(trial_id: str, state: str = "running", **metrics: float) -> TrialEvent:
    epoch = int(metrics.get("epoch", 1))
    return TrialEvent("s", trial_id, f"trial_{trial_id}", state, {"x": 1}, metrics, epoch, None)


def brute_force_best(session: Session, sweep_id: str) -> tuple[str, float] | None:
    """What the old full scan chose: the best latest report among the trials not failed."""
    sweep = sweep_queries.get_sweep(session, sweep_id)
    trials = trial_queries.list_trials(session, sweep_id)
    found = best_trials(objectives_of(sweep.spec)[:1], trials, finished_only=False)
    return (found[0].trial_id, found[0].metrics["val_nll"]) if found else None


def stored_best(session: Session, sweep_id: str) -> tuple[str, float] | None:
    best = sweep_queries.get_sweep(session, sweep_id).best
    return (best[0]["trial_id"], best[0]["metrics"]["val_nll"]) if best else None


# An event: a report (trial, state, value or NaN or no metrics), a batch of them, or a relabel
# by the store itself (the reconciler interrupting running trials, or a driver's outcome that
# leaves the sweep running: a stop nobody asked for).
values = st.one_of(st.floats(0.0, 5.0), st.just(math.nan), st.none())
reports = st.tuples(st.sampled_from(TRIAL_IDS), st.sampled_from(STATES), values)
steps = st.one_of(
    st.tuples(st.just("report"), st.lists(reports, min_size=1, max_size=4)),
    st.tuples(st.just("interrupt"), st.none()),
    st.tuples(st.just("outcome"), st.lists(reports, min_size=1, max_size=3)),
)


def as_event(trial_id: str, state: str, value: float | None) -> TrialEvent:
    return report(trial_id, state) if value is None else report(trial_id, state, val_nll=value)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(steps, min_size=1, max_size=12))
def test_the_incremental_best_is_the_brute_force_best(session_factory, script):
    sweep_id = new_sweep(session_factory, "running")
    objectives = objectives_of({})
    with session_factory() as session:
        for kind, payload in script:
            if kind == "interrupt":
                with transactions.writing(session):
                    transactions.bump(session, sweep_id)
                    trial_queries.interrupt_trials(session, sweep_id, "the driver was lost")
                continue
            if kind == "outcome":
                summaries = [
                    TrialSummary(
                        t, f"trial_{t}", s, {"x": 1}, {} if v is None else {"val_nll": v}, None
                    )
                    for t, s, v in payload
                ]
                # The driver's own choice stands until the next report.
                stopped = outcome(sweep_id, "stopped", summaries, best=summaries[-1:])
                record_outcome(session, sweep_id, stopped)
                continue
            upsert_trials(session, sweep_id, [as_event(*r) for r in payload], objectives)
            assert stored_best(session, sweep_id) == brute_force_best(session, sweep_id)


def test_a_best_that_gets_worse_or_fails_gives_way_to_the_next(session_factory):
    sweep_id = new_sweep(session_factory, "running")
    objectives = objectives_of({})
    with session_factory() as session:
        upsert_trials(
            session,
            sweep_id,
            [report(t, val_nll=v) for t, v in [("a", 0.3), ("b", 0.5), ("c", 0.4)]],
            objectives,
        )
        assert stored_best(session, sweep_id) == ("a", 0.3)
        upsert_trials(session, sweep_id, [report("a", val_nll=0.9)], objectives)  # overfits
        assert stored_best(session, sweep_id) == ("c", 0.4)
        upsert_trials(session, sweep_id, [report("c", "failed")], objectives)
        assert stored_best(session, sweep_id) == ("b", 0.5)
        # Ties go to the lower trial id, as the full scan's order had them.
        upsert_trials(session, sweep_id, [report("d", val_nll=0.5)], objectives)
        assert stored_best(session, sweep_id) == ("b", 0.5)


# ---------------------------------------------------------------- pages of trials


def fill(sessions: sessionmaker[Session], sweep_id: str, values: dict[str, Any]) -> None:
    objectives = objectives_of({})
    events = [
        report(t, val_nll=v) if v is not None else report(t, epoch=1) for t, v in values.items()
    ]
    with sessions() as session:
        upsert_trials(session, sweep_id, events, objectives)


def all_pages(session: Session, sweep_id: str, limit: int, **query: Any) -> list[Trial]:
    found: list[Trial] = []
    cursor = None
    while True:
        page, cursor = trial_queries.trial_page(
            session, sweep_id, limit=limit, cursor=cursor, **query
        )
        assert len(page) <= limit
        found.extend(page)
        if cursor is None:
            return found


def test_ordering_by_a_metric_puts_nan_and_missing_last_in_both_directions(session_factory):
    sweep_id = new_sweep(session_factory, "running")
    values = {"t1": 0.5, "t2": math.nan, "t3": 0.1, "t4": None, "t5": 0.5, "t6": 2.0, "t7": 0.1}
    fill(session_factory, sweep_id, values)
    finite = [(v, t) for t, v in values.items() if v is not None and not math.isnan(v)]
    rest = sorted(t for t, v in values.items() if v is None or math.isnan(v))
    with session_factory() as session:
        for descending in (False, True):
            ranked = sorted(finite, key=lambda item: (-item[0] if descending else item[0], item[1]))
            expected = [t for _, t in ranked] + rest
            for limit in (1, 2, 3, 50):
                got = all_pages(session, sweep_id, limit, order_by="val_nll", descending=descending)
                assert [t.trial_id for t in got] == expected, (descending, limit)
        by_id = all_pages(session, sweep_id, 3, descending=True)
        assert [t.trial_id for t in by_id] == sorted(values, reverse=True)


def test_pages_filter_by_state_and_refuse_a_cursor_of_another_order(session_factory):
    sweep_id = new_sweep(session_factory, "running")
    fill(session_factory, sweep_id, {f"t{i}": i / 10 for i in range(10)})
    objectives = objectives_of({})
    with session_factory() as session:
        upsert_trials(
            session,
            sweep_id,
            [report(f"t{i}", "succeeded", val_nll=i / 10) for i in (2, 5, 7)],
            objectives,
        )
        done = all_pages(
            session, sweep_id, 2, states=["succeeded"], order_by="val_nll", descending=True
        )
        assert [t.trial_id for t in done] == ["t7", "t5", "t2"]
        _, cursor = trial_queries.trial_page(session, sweep_id, limit=2, order_by="val_nll")
        assert cursor is not None
        with pytest.raises(paging.InvalidCursor, match="ordered by val_nll asc"):
            trial_queries.trial_page(session, sweep_id, limit=2, order_by="val_ece", cursor=cursor)
        with pytest.raises(paging.InvalidCursor, match="not a trials cursor"):
            trial_queries.trial_page(session, sweep_id, cursor="bm90LWEtY3Vyc29y")
        with pytest.raises(ValueError, match="unknown trial state bogus"):
            trial_queries.trial_page(session, sweep_id, states=["bogus"])
        with pytest.raises(ValueError, match="order_by must be"):
            trial_queries.trial_page(session, sweep_id, order_by="val nll; drop")


def test_paging_by_id_visits_every_trial_once_under_concurrent_inserts(engine, session_factory):
    sweep_id = new_sweep(session_factory, "running")
    first = {uuid.uuid4().hex[:12]: random.random() for _ in range(120)}
    fill(session_factory, sweep_id, first)
    stop = threading.Event()
    inserted: list[str] = []

    def insert() -> None:
        while not stop.is_set():
            batch = {uuid.uuid4().hex[:12]: random.random() for _ in range(3)}
            fill(session_factory, sweep_id, batch)
            inserted.extend(batch)

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
    assert set(first) <= set(seen), "a trial that existed before the first page was skipped"
    assert seen == sorted(seen)


def test_a_follower_gets_only_the_trials_written_since_its_version(session_factory):
    sweep_id = new_sweep(session_factory, "running")
    fill(session_factory, sweep_id, {f"t{i}": 1.0 for i in range(50)})
    with session_factory() as session:
        sweep, everything = sweep_queries.changes_since(session, sweep_id, 0)
        assert len(everything) == 50
        seen = sweep.version
        fill(session_factory, sweep_id, {"t3": 0.5, "t40": 0.7})
        with transactions.writing(session):  # the reconciler relabels what was running
            transactions.bump(session, sweep_id)
            trial_queries.interrupt_trials(
                session, sweep_id, "lost", keep=[f"t{i}" for i in range(1, 50)]
            )
        sweep, changed = sweep_queries.changes_since(session, sweep_id, seen)
        assert sorted(t.trial_id for t in changed) == ["t0", "t3", "t40"]
        assert sweep_queries.changes_since(session, sweep_id, sweep.version) is None


# ---------------------------------------------------------------- the API's pages


@pytest.fixture
def api(session_factory) -> TestClient:
    app = routes_app(session_factory, "secret")
    return TestClient(app, headers={"Authorization": "Bearer secret"})


def test_the_trials_route_pages_sorts_and_filters(api, session_factory):
    sweep_id = new_sweep(session_factory, "running")
    fill(session_factory, sweep_id, {f"t{i:02d}": (i * 7 % 11) / 10 for i in range(30)})
    top = api.get(f"/v1/sweeps/{sweep_id}/trials", params={"order_by": "val_nll", "limit": 5})
    assert top.status_code == 200, top.text
    values = [t["metrics"]["val_nll"] for t in top.json()["items"]]
    assert values == sorted(values) and len(values) == 5 and values[0] == 0.0
    collected, cursor = [], None
    while True:
        params = {"limit": 4, "direction": "desc", **({"cursor": cursor} if cursor else {})}
        page = api.get(f"/v1/sweeps/{sweep_id}/trials", params=params).json()
        collected += [t["trial_id"] for t in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert collected == sorted((f"t{i:02d}" for i in range(30)), reverse=True)
    none_failed = api.get(f"/v1/sweeps/{sweep_id}/trials", params={"state": "failed"}).json()
    assert none_failed == {"items": [], "next_cursor": None}

    for params, status in [
        ({"limit": 0}, 422),
        ({"limit": paging.MAX_PAGE + 1}, 422),
        ({"state": "bogus"}, 422),
        ({"order_by": "val nll"}, 422),
        ({"direction": "sideways"}, 422),
        ({"cursor": "not-a-cursor"}, 400),
    ]:
        response = api.get(f"/v1/sweeps/{sweep_id}/trials", params=params)
        assert response.status_code == status, (params, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    assert api.get("/v1/sweeps/" + "0" * 32 + "/trials").status_code == 404


# ---------------------------------------------------------------- a driver killed mid-queue


def test_a_driver_killed_with_reports_queued_loses_nothing_the_next_attempt_relabels(
    ray_local, tmp_path
):
    """The driver's writer flushes once and then holds every report for a minute, as if the
    store were slow; the driver is killed with a finished trial's reports still queued."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_sessions(engine)
    spec = digits_spec(
        name="killed-queue",
        fixed={"epochs": 3, "batch_size": 256, "lr": 0.003, "device": "cpu"},
        budget={"max_trials": 6, "max_concurrent_trials": 1},
    )
    with sessions() as session:
        sweep, _ = sweep_queries.create_sweep(session, spec.to_document())
        status_machine.transition(session, sweep.id, "submitted")
    options = {
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "storage_path": str(tmp_path / "tune"),
    }
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from service.store.database import make_engine;"
            "from service.store.sweep_store import DatabaseSweepStore;"
            "from sweeps import DriverOptions, run_stored;"
            f"run_stored({sweep.id!r}, DatabaseSweepStore(make_engine({url!r})),"
            f" DriverOptions(quiet=True, **{options!r}))",
        ],
        env={**os.environ, "GRADREG_STORE_FLUSH_S": "60"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    states = tmp_path / "tune" / sweep.id / STATES_FILE
    try:

        def a_trial_finished() -> bool:
            if states.exists() and "succeeded" in states.read_text():
                return True
            assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
            return False

        poll_until(a_trial_finished, 240, "a trial finishing", interval_s=0.2)
        # The states file is written while Tune saves its experiment state: let that save end.
        time.sleep(0.5)
        assert driver.poll() is None, "the sweep ended before the kill: nothing was queued"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finished_before = {k for k, v in json.loads(states.read_text()).items() if v == "succeeded"}
    with sessions() as session:
        stored = {t.trial_id: t.state for t in trial_queries.list_trials(session, sweep.id)}
    # The condition under test arose: the store had not been told of a finished trial.
    assert any(stored.get(t) != "succeeded" for t in finished_before), stored

    with sessions() as session:  # what the reconciler does when it finds the job gone
        status_machine.end_attempt(session, sweep.id, "the driver's job vanished", resubmit=True)
    final = run_stored(sweep.id, DatabaseSweepStore(engine), DriverOptions(quiet=True, **options))
    assert final.status == "succeeded", final.reason
    with sessions() as session:
        rows = {t.trial_id: t for t in trial_queries.list_trials(session, sweep.id)}
        best = sweep_queries.get_sweep(session, sweep.id).best
    expected = {t.trial_id: t for t in final.trials}
    for trial_id, trial in rows.items():
        if trial_id in expected:
            assert trial.state == expected[trial_id].state
            assert trial.epoch == 3 and trial.metrics == expected[trial_id].metrics
        else:  # started by the killed driver after Tune's last save: said so
            assert (trial.state, trial.error) == ("interrupted", LOST_TRIAL)
    assert set(expected) <= set(rows) and finished_before <= set(expected)
    assert all(expected[t].state == "succeeded" for t in finished_before)
    assert best and best[0]["trial_id"] in expected
    engine.dispose()


def test_an_upgrade_mid_sweep_keeps_its_best_so_far_right(store_url):
    """Trials stored before 0003 have no loss column: a running sweep's get one at upgrade,
    so the indexed best still sees them."""
    engine = make_engine(store_url)
    try:
        upgrade(engine, "0002")
        with engine.begin() as connection:
            for sweep_id, status in (("run", "running"), ("done", "succeeded")):
                connection.execute(
                    sa.text(
                        "INSERT INTO sweeps (id, name, spec, tags, status, attempt,"
                        " cancel_requested, created_at, updated_at, version) VALUES (:id, 'old',"
                        " :spec, '[]', :status, 1, false, :now, :now, 1)"
                    ),
                    {
                        "id": sweep_id,
                        "status": status,
                        "spec": json.dumps({"objectives": [{"metric": "val_accuracy"}]}),
                        "now": "2026-01-01 00:00:00",
                    },
                )
                for trial_id, state, accuracy in (
                    ("a", "running", 0.9),
                    ("b", "failed", 0.99),
                    ("c", "succeeded", 0.8),
                ):
                    connection.execute(
                        sa.text(
                            "INSERT INTO trials (sweep_id, trial_id, name, state, params, metrics,"
                            " epoch, updated_at) VALUES (:sweep, :id, :id, :state, '{}', :metrics,"
                            " 1, :now)"
                        ),
                        {
                            "sweep": sweep_id,
                            "id": trial_id,
                            "state": state,
                            "metrics": json.dumps({"val_accuracy": accuracy}),
                            "now": "2026-01-01 00:00:00",
                        },
                    )
        upgrade(engine)
        sessions = make_sessions(engine)
        with sessions() as session:
            losses = {
                (t.sweep_id, t.trial_id): t.objective for t in session.scalars(sa.select(Trial))
            }
            assert losses == {
                ("run", "a"): -0.9,  # maximised: negated
                ("run", "b"): None,  # failed
                ("run", "c"): -0.8,
                ("done", "a"): None,  # a finished sweep's best is final: left alone
                ("done", "b"): None,
                ("done", "c"): None,
            }
            objectives = objectives_of(sweep_queries.get_sweep(session, "run").spec)
            upsert_trials(session, "run", [report("d", val_accuracy=0.85)], objectives)
            assert sweep_queries.get_sweep(session, "run").best[0]["trial_id"] == "a"
    finally:
        engine.dispose()
