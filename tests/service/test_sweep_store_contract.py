"""One contract, every `SweepStore`: the directory store and the database store (on SQLite
and on PostgreSQL) must look the same to the sweep driver."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.store import status_machine, sweep_queries, trial_queries
from service.store.database import make_engine, upgrade
from service.store.database import session_factory as make_sessions
from service.store.sweep_store import DatabaseSweepStore
from sweeps import (
    DirectoryStore,
    DriverOptions,
    Limits,
    SweepSpec,
    SweepStore,
    TrialEvent,
    run_stored,
)
from sweeps.store import within_allowance
from tests.helpers.specs import digits_spec
from tests.helpers.store import outcome, postgres_schema, record, summary


@dataclass
class Backend:
    """A store plus what only its owner can do: submit a sweep, ask it to stop, read it."""

    name: str
    store: SweepStore
    root: Path | None = None
    sessions: sessionmaker[Session] | None = None

    def submit(self, spec: SweepSpec, limits: Limits | None = None) -> str:
        if isinstance(self.store, DirectoryStore):
            sweep_id = uuid.uuid4().hex
            self.store.submit(sweep_id, spec, limits)
            return sweep_id
        assert self.sessions is not None
        document = None if limits is None else limits.to_document()
        with self.sessions() as session:
            return sweep_queries.create_sweep(session, spec.to_document(), limits=document)[0].id

    def request_stop(self, sweep_id: str) -> None:
        if isinstance(self.store, DirectoryStore):
            self.store.request_stop(sweep_id)
        else:
            assert self.sessions is not None
            with self.sessions() as session:
                status_machine.request_cancel(session, sweep_id)

    def set_allowance(self, sweep_id: str, trials: int | None) -> None:
        if isinstance(self.store, DirectoryStore):
            self.store.set_allowance(sweep_id, trials)
            return
        assert self.sessions is not None
        with self.sessions() as session:
            status_machine.update_sweep(session, sweep_id, allowance=trials)

    def final_trials(self, sweep_id: str) -> dict[str, tuple[str, dict[str, Any]]]:
        """Each trial's state and metrics as the store holds them after the outcome."""
        if isinstance(self.store, DirectoryStore):
            assert self.root is not None
            document = json.loads((self.root / sweep_id / "outcome.json").read_text())
            return {t["trial_id"]: (t["state"], t["metrics"]) for t in document["trials"]}
        assert self.sessions is not None
        with self.sessions() as session:
            return {
                t.trial_id: (t.state, t.metrics)
                for t in trial_queries.list_trials(session, sweep_id)
            }


@pytest.fixture(params=["directory", "sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "directory":
        yield Backend("directory", DirectoryStore(tmp_path / "store"), root=tmp_path / "store")
        return
    with contextlib.ExitStack() as stack:
        url = (
            f"sqlite:///{tmp_path / 'store.db'}"
            if request.param == "sqlite"
            else stack.enter_context(contextlib.contextmanager(postgres_schema)())
        )
        engine = make_engine(url)
        stack.callback(engine.dispose)
        upgrade(engine)
        yield Backend(request.param, DatabaseSweepStore(engine), sessions=make_sessions(engine))


def test_the_spec_comes_back_as_it_was_submitted(backend: Backend):
    spec = digits_spec()
    sweep_id = backend.submit(spec)
    assert backend.store.load_spec(sweep_id) == spec


def test_the_limits_it_was_admitted_under_come_back(backend: Backend, tmp_path):
    limits = Limits(max_epochs=7, max_trial_cpus=2, data_root=tmp_path)
    assert backend.store.load_limits(backend.submit(digits_spec(), limits)) == limits
    assert backend.store.load_limits(backend.submit(digits_spec())) is None


def test_a_sweep_runs_under_the_limits_it_was_admitted_under(
    backend: Backend, ray_local, tmp_path, monkeypatch
):
    spec = digits_spec(
        fixed={"epochs": 2, "batch_size": 256, "lr": 0.003, "device": "cpu"},
        budget={"max_trials": 1, "max_concurrent_trials": 1},
    )
    sweep_id = backend.submit(spec, Limits(max_epochs=5))
    monkeypatch.setenv("GRADREG_MAX_EPOCHS", "1")  # the driver's own environment is stricter
    options = DriverOptions(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        storage_path=str(tmp_path / "tune"),
        quiet=True,
    )
    assert run_stored(sweep_id, backend.store, options).status == "succeeded"


def test_an_unknown_sweep_is_an_error_that_names_it(backend: Backend):
    missing = "f" * 32
    with pytest.raises((LookupError, FileNotFoundError), match=missing):
        backend.store.load_spec(missing)
    with pytest.raises((LookupError, FileNotFoundError), match=missing):
        backend.store.stop_requested(missing)


def test_a_stop_request_is_seen_by_the_driver(backend: Backend):
    sweep_id = backend.submit(digits_spec())
    backend.store.record_start(sweep_id, record(sweep_id))
    assert backend.store.stop_requested(sweep_id) is False
    backend.request_stop(sweep_id)
    assert backend.store.stop_requested(sweep_id) is True


def test_events_then_the_outcome_leave_each_trial_in_its_final_state(backend: Backend):
    sweep_id = backend.submit(digits_spec())
    backend.store.record_start(sweep_id, record(sweep_id))
    for state, epoch in [("running", 1), ("retrying", 1), ("running", 2), ("succeeded", 3)]:
        backend.store.record_trial(sweep_id, _event(sweep_id, "t1", state, epoch))
    backend.store.record_trial(sweep_id, _event(sweep_id, "t2", "failed", 1))
    trials = [summary("t1", "succeeded", 0.4), summary("t2", "failed", 0.9)]
    backend.store.record_outcome(sweep_id, outcome(sweep_id, "succeeded", trials))
    assert backend.final_trials(sweep_id) == {
        "t1": ("succeeded", {"epoch": 3.0, "val_nll": 0.4}),
        "t2": ("failed", {"epoch": 3.0, "val_nll": 0.9}),
    }


def test_a_sweep_runs_through_the_store_from_its_id(backend: Backend, ray_local, tmp_path):
    spec = digits_spec(
        fixed={"epochs": 1, "batch_size": 256, "lr": 0.003, "device": "cpu"},
        budget={"max_trials": 2, "max_concurrent_trials": 2},
    )
    sweep_id = backend.submit(spec)
    options_root = tmp_path / backend.name
    options = DriverOptions(
        tracking_uri=f"sqlite:///{options_root / 'mlflow.db'}",
        storage_path=str(options_root / "tune"),
        quiet=True,
    )
    result = run_stored(sweep_id, backend.store, options)
    assert result.status == "succeeded"
    stored = backend.final_trials(sweep_id)
    assert {t.trial_id: t.state for t in result.trials} == {k: v[0] for k, v in stored.items()}
    assert all(metrics["epoch"] == 1 for _, metrics in stored.values())


def _event(sweep_id: str, trial_id: str, state: str, epoch: int) -> TrialEvent:
    return TrialEvent(
        sweep=sweep_id,
        trial_id=trial_id,
        trial_name=f"trial_{trial_id}",
        state=state,
        params={"lr": 0.01},
        metrics={"epoch": float(epoch), "val_nll": 1.0 / epoch},
        epoch=epoch,
        mlflow_run_id=f"run-{trial_id}",
    )


def test_the_allowance_the_owner_sets_is_what_the_driver_reads(backend):
    sweep_id = backend.submit(digits_spec(budget={"max_trials": 4, "max_concurrent_trials": 3}))
    assert backend.store.allowance(sweep_id) is None
    backend.set_allowance(sweep_id, 2)
    assert backend.store.allowance(sweep_id) == 2
    budget = backend.store.load_spec(sweep_id).budget
    assert within_allowance(budget, 2).max_concurrent_trials == 2
    assert within_allowance(budget, 0).max_concurrent_trials == 0  # nothing new starts
    assert within_allowance(budget, 5) == budget  # an allowance never raises the budget
    assert within_allowance(budget, None) == budget
    backend.set_allowance(sweep_id, 0)
    assert backend.store.allowance(sweep_id) == 0
