"""A sweep's best as the store keeps it and the API shows it, with what it is (its basis).

Several objectives: the Pareto set of the finished trials, while the sweep runs and at its end,
empty until one finishes. One: the best so far by latest report while it runs, the best
finished trial once its driver has reported. On SQLite and PostgreSQL (see conftest).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.statuses import BEST_BY_LATEST_REPORT, BEST_FINISHED, PARETO_OF_FINISHED
from service.store import status_machine, sweep_queries, trial_queries
from service.store.database import current_revision, head_revision, make_engine, upgrade
from service.store.database import session_factory as make_sessions
from service.store.models import Sweep
from service.store.sweep_store import DatabaseSweepStore, objectives_of, upsert_trials
from sweeps import DriverOptions, SweepOutcome, TrialEvent, TrialSummary, run_stored
from sweeps.records import SCORED_STATES, best_trials, trial_name
from tests.helpers.api import routes_app
from tests.helpers.specs import digits_spec
from tests.helpers.store import new_sweep, old_sweep, outcome, record

TWO = [{"metric": "val_nll", "goal": "minimize"}, {"metric": "val_accuracy", "goal": "maximize"}]
ONE = [{"metric": "val_nll", "goal": "minimize"}]
TOKEN = "best-token"


def report(number: int, state: str = "running", epoch: int = 1, **metrics: float) -> TrialEvent:
    trial_id = f"{number:05x}"
    return TrialEvent(
        "demo",
        trial_id,
        trial_name("demo", number, trial_id),
        state,  # type: ignore[arg-type]
        {"lr": number / 100},
        {"epoch": float(epoch), **metrics},
        epoch,
        f"run-{number}",
    )


def write(sessions: sessionmaker[Session], sweep_id: str, *events: TrialEvent) -> None:
    with sessions() as session:
        objectives = objectives_of(sweep_queries.get_sweep(session, sweep_id).spec)
        upsert_trials(session, sweep_id, list(events), objectives)


def stored(sessions: sessionmaker[Session], sweep_id: str) -> tuple[list[int], str | None]:
    """The stored best's trial numbers, in order, and its basis."""
    with sessions() as session:
        sweep = sweep_queries.get_sweep(session, sweep_id)
        return [int(t["name"].split("-t")[1].split("-")[0]) for t in sweep.best or []], (
            sweep.best_basis
        )


def expected_set(sessions: sessionmaker[Session], sweep_id: str) -> set[str]:
    """best_trials of the trials as stored (finished ones count): what the outcome would say."""
    with sessions() as session:
        sweep = sweep_queries.get_sweep(session, sweep_id)
        trials = trial_queries.list_trials(session, sweep_id)
        return {t.trial_id for t in best_trials(objectives_of(sweep.spec), trials)}


@pytest.fixture
def api(session_factory) -> Iterator[TestClient]:
    """The sweeps routes on the test's store."""
    app = routes_app(session_factory, TOKEN)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_a_running_multi_objective_sweep_shows_the_pareto_set_of_its_finished_trials(
    session_factory, api
):
    sweep_id = new_sweep(session_factory, "running", objectives=TWO)
    best = api.get(f"/v1/sweeps/{sweep_id}/best").json()
    assert (best["pareto"], best["basis"], best["best"]) == (True, PARETO_OF_FINISHED, [])

    # Running trials, one better than any other by both objectives: none has finished.
    write(session_factory, sweep_id, report(1, val_nll=0.2, val_accuracy=0.9))
    write(session_factory, sweep_id, report(2, val_nll=0.5, val_accuracy=0.6))
    best = api.get(f"/v1/sweeps/{sweep_id}/best").json()
    assert (best["pareto"], best["basis"], best["best"]) == (True, PARETO_OF_FINISHED, [])
    sweep = api.get(f"/v1/sweeps/{sweep_id}").json()
    assert (sweep["best"], sweep["best_basis"]) == (None, PARETO_OF_FINISHED)

    write(session_factory, sweep_id, report(2, "succeeded", 3, val_nll=0.4, val_accuracy=0.7))
    assert stored(session_factory, sweep_id) == ([2], PARETO_OF_FINISHED)
    # a trade-off joins; a finished trial a member dominates does not
    write(
        session_factory,
        sweep_id,
        report(3, "stopped", 2, val_nll=0.3, val_accuracy=0.6),
        report(4, "succeeded", 3, val_nll=0.45, val_accuracy=0.65),
    )
    assert stored(session_factory, sweep_id) == ([3, 2], PARETO_OF_FINISHED)
    # a failed trial never counts, however good its last report
    write(session_factory, sweep_id, report(5, "failed", 1, val_nll=0.1, val_accuracy=0.99))
    # t1 finishes better by both: it evicts both members
    write(session_factory, sweep_id, report(1, "succeeded", 3, val_nll=0.25, val_accuracy=0.8))
    assert stored(session_factory, sweep_id) == ([1], PARETO_OF_FINISHED)
    best = api.get(f"/v1/sweeps/{sweep_id}/best").json()
    assert [t["trial_id"] for t in best["best"]] == ["00001"]
    assert best["best"][0]["state"] == "succeeded" and best["best"][0]["metrics"]["epoch"] == 3
    assert {t["trial_id"] for t in best["best"]} == expected_set(session_factory, sweep_id)


def test_a_member_no_longer_finished_rebuilds_the_set_from_the_finished_trials(session_factory):
    sweep_id = new_sweep(session_factory, "running", objectives=TWO)
    write(
        session_factory,
        sweep_id,
        report(1, "succeeded", 3, val_nll=0.2, val_accuracy=0.9),
        report(2, "succeeded", 3, val_nll=0.3, val_accuracy=0.8),  # dominated by t1
        report(3, "succeeded", 3, val_nll=0.4, val_accuracy=0.85),  # dominated by t1
    )
    assert stored(session_factory, sweep_id) == ([1], PARETO_OF_FINISHED)
    write(session_factory, sweep_id, report(1, "retrying", 3))  # Tune retries it after all
    assert stored(session_factory, sweep_id) == ([2, 3], PARETO_OF_FINISHED)


def test_a_resumed_sweep_continues_from_the_stored_set(engine, session_factory):
    store = DatabaseSweepStore(engine)
    sweep_id = new_sweep(session_factory, "running", objectives=TWO)
    store.record_trials(
        sweep_id,
        [
            report(1, "succeeded", 3, val_nll=0.2, val_accuracy=0.7),
            report(2, "succeeded", 3, val_nll=0.3, val_accuracy=0.8),
            report(3, val_nll=0.1, val_accuracy=0.95),  # running when the driver dies
        ],
    )
    with session_factory() as session:  # the reconciler fails the attempt and resubmits it
        status_machine.end_attempt(session, sweep_id, "driver job FAILED", resubmit=True)
    assert stored(session_factory, sweep_id) == ([1, 2], PARETO_OF_FINISHED)
    store.record_start(sweep_id, record(sweep_id))
    store.record_trials(sweep_id, [report(4, "succeeded", 3, val_nll=0.25, val_accuracy=0.75)])
    assert stored(session_factory, sweep_id) == ([1, 4, 2], PARETO_OF_FINISHED)
    store.record_trials(sweep_id, [report(5, "succeeded", 3, val_nll=0.15, val_accuracy=0.8)])
    assert stored(session_factory, sweep_id) == ([5], PARETO_OF_FINISHED)
    assert {"00005"} == expected_set(session_factory, sweep_id)


def test_one_objective_the_best_so_far_then_the_best_finished_trial(engine, session_factory, api):
    store = DatabaseSweepStore(engine)
    sweep_id = new_sweep(session_factory, "running", objectives=ONE)
    assert stored(session_factory, sweep_id) == ([], BEST_BY_LATEST_REPORT)
    store.record_trials(
        sweep_id,
        [
            report(1, "succeeded", 3, val_nll=0.3),
            report(2, val_nll=0.2),  # running: it counts by its latest report
        ],
    )
    best = api.get(f"/v1/sweeps/{sweep_id}/best").json()
    assert (best["pareto"], best["basis"]) == (False, BEST_BY_LATEST_REPORT)
    assert [t["trial_id"] for t in best["best"]] == ["00002"]

    summaries = [
        TrialSummary("00001", report(1).trial_name, "succeeded", {}, {"val_nll": 0.3}, None),
        TrialSummary("00002", report(2).trial_name, "interrupted", {}, {"val_nll": 0.2}, None),
    ]
    final = outcome(sweep_id, "failed", summaries, best=summaries[:1])
    store.record_outcome(sweep_id, final)
    best = api.get(f"/v1/sweeps/{sweep_id}/best").json()
    assert (best["basis"], [t["trial_id"] for t in best["best"]]) == (BEST_FINISHED, ["00001"])

    with session_factory() as session:
        status_machine.resume(session, sweep_id)
    store.record_start(sweep_id, record(sweep_id))
    store.record_trials(sweep_id, [report(3, val_nll=0.25)])
    assert stored(session_factory, sweep_id) == ([2], BEST_BY_LATEST_REPORT)


def test_the_outcome_labels_its_best(engine, session_factory):
    store = DatabaseSweepStore(engine)
    sweep_id = new_sweep(session_factory, "running", objectives=TWO)
    summary = TrialSummary("00001", report(1).trial_name, "succeeded", {}, {"val_nll": 1.0}, None)
    store.record_outcome(sweep_id, outcome(sweep_id, "succeeded", [summary]))
    assert stored(session_factory, sweep_id) == ([1], PARETO_OF_FINISHED)


@pytest.mark.parametrize("seed", range(6))
def test_the_set_kept_one_write_at_a_time_is_the_finished_trials_pareto_set(session_factory, seed):
    """Random writes of ten trials (reports, batches, retries, finishes, failures): after each,
    the stored set is best_trials of the trials as stored, ordered by its objectives."""
    rng = random.Random(seed)
    sweep_id = new_sweep(session_factory, "running", objectives=TWO)
    states = ["running", "running", "succeeded", "stopped", "failed", "retrying"]
    values = [0.1, 0.2, 0.3]
    for _ in range(40):
        events = []
        for _ in range(rng.choice([1, 1, 3])):
            metrics = {"val_nll": rng.choice(values), "val_accuracy": rng.choice(values)}
            if rng.random() < 0.1:
                metrics.pop("val_accuracy")
            events.append(report(rng.randint(1, 10), rng.choice(states), 1, **metrics))
        write(session_factory, sweep_id, *events)
        with session_factory() as session:
            best = sweep_queries.get_sweep(session, sweep_id).best or []
        assert {t["trial_id"] for t in best} == expected_set(session_factory, sweep_id)
        keys = [(t["metrics"]["val_nll"], -t["metrics"]["val_accuracy"]) for t in best]
        assert keys == sorted(keys)


# ---------------------------------------------------------------- stored before the basis


def test_the_migration_labels_the_bests_it_can_tell(store_url):
    engine = make_engine(store_url)
    try:
        upgrade(engine, "0005")
        one, two = {"objectives": ONE}, {"objectives": TWO}
        some = [{"trial_id": "x", "name": "x", "state": "succeeded", "metrics": {}}]
        with engine.begin() as connection:
            old_sweep(connection, "done-1", "succeeded", one, some)
            old_sweep(connection, "done-2", "succeeded", two, some)
            old_sweep(connection, "new-1", "pending", one)
            old_sweep(connection, "new-2", "running", two)
            old_sweep(connection, "run-2", "running", two, some)  # the old rule's best
            old_sweep(connection, "failed-1", "failed", one, some)  # outcome's, or so far?
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        with make_sessions(engine)() as session:
            bases = {s.id: s.best_basis for s in session.scalars(sa.select(Sweep))}
        assert bases == {
            "done-1": BEST_FINISHED,
            "done-2": PARETO_OF_FINISHED,
            "new-1": BEST_BY_LATEST_REPORT,
            "new-2": PARETO_OF_FINISHED,
            "run-2": None,
            "failed-1": None,
        }
    finally:
        engine.dispose()


def test_a_running_sweeps_old_best_becomes_its_pareto_set_with_its_next_write(store_url):
    """Before, a running multi-objective sweep's best was its best trial by the first objective,
    labelled a Pareto set: its next write, whatever it is, rebuilds the real set."""
    engine = make_engine(store_url)
    try:
        upgrade(engine, "0005")
        best, trade_off = (
            report(5, "succeeded", 3, val_nll=0.1, val_accuracy=0.8),
            report(6, "succeeded", 3, val_nll=0.3, val_accuracy=0.9),
        )
        with engine.begin() as connection:
            old_sweep(connection, "s", "running", {"objectives": TWO}, [summary_of_event(best)])
            for event in (best, trade_off):
                old_trial(connection, "s", event)
        upgrade(engine)
        sessions = make_sessions(engine)
        answer = _client(sessions).get("/v1/sweeps/s/best").json()
        assert (answer["basis"], [t["trial_id"] for t in answer["best"]]) == (None, ["00005"])
        write(sessions, "s", report(7, val_nll=0.05, val_accuracy=0.95))  # a running report
        assert stored(sessions, "s") == ([5, 6], PARETO_OF_FINISHED)
    finally:
        engine.dispose()


def summary_of_event(event: TrialEvent) -> dict[str, Any]:
    return {
        "trial_id": event.trial_id,
        "name": event.trial_name,
        "state": event.state,
        "params": event.params,
        "metrics": event.metrics,
        "mlflow_run_id": event.mlflow_run_id,
        "error": None,
    }


def old_trial(connection: sa.Connection, sweep_id: str, event: TrialEvent) -> None:
    """A trial row as a store at 0005 holds it."""
    connection.execute(
        sa.text(
            "INSERT INTO trials (sweep_id, trial_id, name, number, state, params, metrics,"
            " epoch, mlflow_run_id, updated_at, objective, version) VALUES (:sweep, :id, :name,"
            " :number, :state, :params, :metrics, :epoch, :run, :now, :objective, 1)"
        ),
        {
            "sweep": sweep_id,
            "id": event.trial_id,
            "name": event.trial_name,
            "number": int(event.trial_id, 16),
            "state": event.state,
            "params": json.dumps(event.params),
            "metrics": json.dumps(event.metrics),
            "epoch": event.epoch,
            "run": event.mlflow_run_id,
            "now": "2026-01-01 00:00:00",
            "objective": event.metrics["val_nll"],
        },
    )


def _client(sessions: sessionmaker[Session]) -> TestClient:
    app = routes_app(sessions, TOKEN)
    return TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


# ---------------------------------------------------------------- a real sweep


class WatchedStore(DatabaseSweepStore):
    """The database store that notes the sweep's best after each write of trial events, and
    just before the outcome replaces it."""

    held: Any = None
    seen: list[list[dict[str, Any]]]

    def record_trials(self, sweep_id: str, events: Sequence[TrialEvent]) -> None:
        super().record_trials(sweep_id, events)
        with self.sessions() as session:
            self.seen.append(sweep_queries.get_sweep(session, sweep_id).best or [])

    def record_outcome(self, sweep_id: str, outcome: SweepOutcome) -> None:
        with self.sessions() as session:
            sweep = sweep_queries.get_sweep(session, sweep_id)
            self.held = (sweep.best, sweep.best_basis)
        super().record_outcome(sweep_id, outcome)


def test_a_real_sweeps_outcome_has_the_set_the_store_held(ray_local, tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade(engine)
    try:
        store = WatchedStore(engine)
        store.seen = []
        spec = digits_spec(
            fixed={"epochs": 1, "batch_size": 256, "lr": 0.003, "device": "cpu"},
            objectives=TWO,
            budget={"max_trials": 4, "max_concurrent_trials": 2},
        )
        with make_sessions(engine)() as session:
            sweep_id = sweep_queries.create_sweep(session, spec.to_document())[0].id
        options = DriverOptions(
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            storage_path=str(tmp_path / "tune"),
            quiet=True,
        )
        result = run_stored(sweep_id, store, options)
        assert result.status == "succeeded" and result.best
        held, basis = store.held
        assert basis == PARETO_OF_FINISHED
        assert {t["trial_id"] for t in held} == {t.trial_id for t in result.best}
        # while it ran, the set held finished trials only, and it was empty before one finished
        assert store.seen and store.seen[0] == []
        assert all(t["state"] in SCORED_STATES for best in store.seen for t in best)
    finally:
        engine.dispose()
