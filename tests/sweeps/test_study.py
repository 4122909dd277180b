"""The sweep's Optuna study (sweeps.study): where it is kept, that a resume reconnects to it,
and that it stays apart from the service's tables; and the importances a sweep logs from it."""

from __future__ import annotations

import contextlib
import json
import pickle
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from sweeps import DriverOptions, TrialEvent, resume_sweep, run_stored, run_sweep
from sweeps.driver import _optuna_search
from sweeps.store import store_database_url
from sweeps.study import (
    EXPERIMENT_ATTR,
    LOST_ATTR,
    TUNE_TRIAL_ATTR,
    StudyExistsError,
    StudyPlace,
    StudyStorage,
    attached,
    beside_store,
    check_resumable,
    make_searcher,
    redact,
    study_place,
)
from sweeps.tracking import (
    IMPORTANCE_FILE,
    IMPORTANCE_TAG,
    ROLE_TAG,
    STUDY_NAME_TAG,
    STUDY_SOURCE_TAG,
    STUDY_STORAGE_TAG,
)
from tests.helpers import poll_until
from tests.helpers.specs import digits_spec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
INITIAL_POINT = {"noise_scale": 0.01, "prior_variance": 1.0}
PASSWORD = "s3cret-pw"


def parent_run(tracking_uri: str, experiment: str):
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    (parent,) = [
        r for r in client.search_runs([found.experiment_id]) if r.data.tags.get(ROLE_TAG) == "sweep"
    ]
    return client, parent


# ---------------------------------------------------------------- where


def test_each_rule_chooses_its_place(tmp_path):
    experiment = str(tmp_path / "tune" / "s")
    local = study_place("s", experiment)
    assert (local.source, local.url) == ("experiment", f"sqlite:///{tmp_path}/tune/s/optuna.db")
    remote = study_place("s", "s3://bucket/tune/s")
    assert (remote.source, remote.url, remote.shown) == ("memory", None, "memory")
    assert "remote" in remote.why and "GRADREG_STUDY_STORAGE" in remote.why
    store = study_place("s", "s3://bucket/tune/s", store_url=f"sqlite:///{tmp_path}/service.db")
    assert (store.source, store.url) == ("store", f"sqlite:///{tmp_path}/service.db.optuna.db")
    # A store without a file (in-memory SQLite) has nothing to keep a study beside.
    assert study_place("s", experiment, store_url="sqlite://").source == "experiment"
    chosen = study_place("s", experiment, store_url="sqlite:///x.db", setting="sqlite:///o.db")
    assert (chosen.source, chosen.url) == ("setting", "sqlite:///o.db")
    assert study_place("s", experiment, setting="memory").url is None


def test_postgres_studies_get_a_schema_of_their_own_and_the_password_stays_hidden():
    base = "postgresql+psycopg://u:p%40ss@db:5432/gradreg"
    plain = sa.make_url(beside_store(base))
    assert plain.query["options"] == "-csearch_path=optuna" and plain.password == "p@ss"
    # The service's own search_path (a schema per tenant or per test) gets its own study schema;
    # its other options stay.
    scoped = beside_store(f"{base}?options=-csearch_path%3Dgradreg_x%20-c%20statement_timeout%3D5")
    options = sa.make_url(scoped).query["options"]
    assert options == "-csearch_path=gradreg_x_optuna -c statement_timeout=5"
    shown = StudyPlace("s", scoped, "store", "").shown
    assert "p@ss" not in shown and "p%40ss" not in shown and "***" in shown
    assert "secret" not in redact("postgresql://u@db/x?password=secret")
    with pytest.raises(ValueError, match="SQLite and PostgreSQL"):
        beside_store("mysql://u@db/x")


def test_a_database_store_names_its_database(tmp_path):
    from service.store.database import make_engine
    from service.store.sweep_store import DatabaseSweepStore
    from sweeps import DirectoryStore

    url = f"sqlite:///{tmp_path / 'service.db'}"
    assert store_database_url(DatabaseSweepStore(make_engine(url))) == url
    assert store_database_url(DirectoryStore(tmp_path)) is None


# ---------------------------------------------------------------- the searcher


def test_a_resumed_searcher_reconnects_and_fails_what_a_killed_driver_lost(tmp_path):
    spec = digits_spec(
        search={
            "algorithm": "tpe",
            "seed": 0,
            "n_startup_trials": 2,
            "initial_points": [INITIAL_POINT],
        }
    )
    place = study_place("s", str(tmp_path / "s"))
    saved = tmp_path / "searcher.pkl"
    with attached(place):
        searcher, _ = make_searcher(place, str(tmp_path / "s"), **_optuna_search(spec))
        searcher.save(str(saved))  # Tune's save, before any trial
        tuner_pickle = pickle.dumps(searcher)
        # After the save: the initial point is asked (then the driver is killed).
        assert searcher.suggest("t1") == INITIAL_POINT
    study = optuna.load_study(study_name="s", storage=place.url)
    (asked,) = study.trials
    assert asked.state.name == "RUNNING" and asked.user_attrs[TUNE_TRIAL_ATTR] == "t1"

    with attached(place):
        resumed = pickle.loads(tuner_pickle)
        resumed.restore(str(saved))
        # The lost trial is failed, and its initial point is asked again, once.
        assert resumed.suggest("t2") == INITIAL_POINT
        resumed.on_trial_result("t2", {"val_nll": 0.5, "training_iteration": 1})
        resumed.on_trial_complete("t2", {"val_nll": 0.4, "training_iteration": 2})
        assert resumed.suggest("t3") != INITIAL_POINT
    trials = optuna.load_study(study_name="s", storage=place.url).trials
    assert [(t.state.name, t.user_attrs.get(TUNE_TRIAL_ATTR)) for t in trials] == [
        ("FAIL", "t1"),
        ("COMPLETE", "t2"),
        ("RUNNING", "t3"),
    ]
    assert LOST_ATTR in trials[0].user_attrs and trials[1].value == 0.4
    assert trials[1].intermediate_values == {}  # final values only (StudySearch)
    assert sum("fixed_params" in t.system_attrs for t in trials) == 2  # lost one, re-run one


def test_a_password_never_reaches_the_saved_state(postgres_study_url):
    url = sa.make_url(postgres_study_url).set(password=PASSWORD)  # trust auth ignores it
    url = url.render_as_string(hide_password=False)
    storage = StudyStorage(url, "s")
    optuna.create_study(study_name="s", storage=storage)
    saved = pickle.dumps(storage)
    assert PASSWORD.encode() not in saved
    with pytest.raises(RuntimeError, match="password"):
        pickle.loads(saved)
    with attached(StudyPlace("s", url, "store", "")):
        assert pickle.loads(saved).get_study_id_from_name("s") is not None


def test_a_fresh_start_replaces_a_stale_study_but_not_another_sweeps(tmp_path):
    spec = digits_spec()
    place = study_place("s", str(tmp_path / "s"))
    first, _ = make_searcher(place, str(tmp_path / "s"), **_optuna_search(spec))
    first.suggest("t1")
    _, notes = make_searcher(place, str(tmp_path / "s"), **_optuna_search(spec))
    assert "deleted the study 's'" in notes[-1]
    assert optuna.load_study(study_name="s", storage=place.url).trials == []

    shared = StudyPlace("s", place.url, "setting", "GRADREG_STUDY_STORAGE")
    with pytest.raises(StudyExistsError, match="another name"):
        make_searcher(shared, str(tmp_path / "elsewhere"), **_optuna_search(spec))
    study = optuna.load_study(study_name="s", storage=place.url)
    assert study.user_attrs[EXPERIMENT_ATTR] == str(tmp_path / "s")


def test_a_resume_refuses_a_study_that_is_not_where_the_sweep_kept_it(tmp_path):
    kept = {"name": "s", "storage": "sqlite:////elsewhere/optuna.db", "source": "experiment"}
    with pytest.raises(FileNotFoundError, match="no Optuna study 's'"):
        check_resumable(study_place("s", str(tmp_path / "s")), kept)
    assert not (tmp_path / "s" / "optuna.db").exists()  # not created by looking
    with pytest.raises(ValueError, match="in memory"):
        check_resumable(study_place("s", "s3://bucket/s"), kept)
    check_resumable(study_place("s", "s3://bucket/s"), {**kept, "source": "memory"})
    check_resumable(study_place("s", "s3://bucket/s"), None)  # saved before studies persisted


# ---------------------------------------------------------------- sweeps (Ray)


def test_a_resumed_sweep_continues_its_study_one_optuna_trial_per_tune_trial(
    ray_local, driver_options, tracking_uri, tmp_path
):
    spec = digits_spec(
        name="digits-study",
        budget={"max_trials": 4, "max_concurrent_trials": 1},
        search={
            "algorithm": "tpe",
            "seed": 0,
            "n_startup_trials": 2,
            "initial_points": [INITIAL_POINT],
        },
    )
    finished: list[str] = []

    def on_trial(event: TrialEvent) -> None:
        if event.state == "succeeded":
            finished.append(event.trial_id)

    first = run_sweep(
        spec,
        DriverOptions(**{**driver_options.__dict__, "stop_poll_s": 0.0}),
        on_trial=on_trial,
        should_stop=lambda: bool(finished),
    )
    assert first.status == "stopped"
    storage = f"sqlite:///{tmp_path / 'tune' / spec.name / 'optuna.db'}"
    study = optuna.load_study(study_name=spec.name, storage=storage)
    assert {t.user_attrs[TUNE_TRIAL_ATTR] for t in study.trials} == {
        t.trial_id for t in first.trials
    }
    _, parent = parent_run(tracking_uri, spec.name)
    assert parent.data.tags[IMPORTANCE_TAG].startswith("not computed: 1 trial(s)")

    # Resumed from another place: the study file goes with Tune's state, and the pickled
    # searcher reconnects to it there (the old place is gone).
    (tmp_path / "tune").rename(tmp_path / "moved")
    moved = DriverOptions(**{**driver_options.__dict__, "storage_path": str(tmp_path / "moved")})
    second = resume_sweep(spec.name, moved)

    assert second.status == "succeeded" and second.counts() == {"succeeded": 4}
    assert not (tmp_path / "tune").exists()
    storage = f"sqlite:///{tmp_path / 'moved' / spec.name / 'optuna.db'}"
    study = optuna.load_study(study_name=spec.name, storage=storage)
    by_tune = {t.user_attrs[TUNE_TRIAL_ATTR]: t for t in study.trials}
    assert len(study.trials) == 4 and set(by_tune) == {t.trial_id for t in second.trials}
    for trial in second.trials:
        optuna_trial = by_tune[trial.trial_id]
        assert optuna_trial.state.name == "COMPLETE"
        assert optuna_trial.value == pytest.approx(trial.metrics["val_nll"])
        assert optuna_trial.params == pytest.approx(trial.params)
    assert [t.system_attrs.get("fixed_params") for t in study.trials].count(INITIAL_POINT) == 1

    client, parent = parent_run(tracking_uri, spec.name)
    tags = parent.data.tags
    assert (tags[STUDY_STORAGE_TAG], tags[STUDY_NAME_TAG]) == (storage, spec.name)
    assert tags[STUDY_SOURCE_TAG] == "experiment" and tags[IMPORTANCE_TAG].startswith("fANOVA")
    importances = {k: v for k, v in parent.data.metrics.items() if k.startswith("importance.")}
    assert set(importances) == {"importance.noise_scale", "importance.prior_variance"}
    assert sum(importances.values()) == pytest.approx(1.0)
    png = client.download_artifacts(parent.info.run_id, IMPORTANCE_FILE, str(tmp_path))
    assert Path(png).read_bytes()[:8] == PNG_MAGIC


def test_a_service_sweep_keeps_its_study_apart_from_the_services_tables(
    ray_local, postgres_store, tmp_path
):
    from service.store import sweep_queries, trial_queries
    from service.store.database import current_revision
    from service.store.sweep_store import DatabaseSweepStore

    engine, sessions, url = postgres_store
    spec = digits_spec(
        fixed={"epochs": 1, "batch_size": 256, "lr": 0.003, "device": "cpu"},
        budget={"max_trials": 2, "max_concurrent_trials": 1},
    )
    with sessions() as session:
        sweep_id = sweep_queries.create_sweep(session, spec.to_document())[0].id
    revision, tables, trial_columns = _service_schema(engine)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    options = DriverOptions(
        tracking_uri=tracking_uri, storage_path=str(tmp_path / "tune"), quiet=True
    )

    outcome = run_stored(sweep_id, DatabaseSweepStore(engine), options)

    assert outcome.status == "succeeded"
    # The service's schema: the same migration, tables and `trials` table as before.
    assert _service_schema(engine) == (revision, tables, trial_columns)
    assert revision == current_revision(engine) and "studies" not in tables
    with sessions() as session:
        assert len(trial_queries.list_trials(session, sweep_id)) == 2
    # Optuna's tables, its own Alembic stamp among them, in the schema beside it.
    study_url = beside_store(url)
    study_engine = sa.create_engine(study_url)
    try:
        optuna_tables = set(sa.inspect(study_engine).get_table_names())
        with study_engine.connect() as connection:
            stamp = connection.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    finally:
        study_engine.dispose()
    assert {"studies", "trials", "version_info", "alembic_version"} <= optuna_tables
    assert [row[0] for row in stamp] != [revision]
    study = optuna.load_study(study_name=sweep_id, storage=study_url)
    assert sorted(t.value for t in study.trials) == sorted(
        t.metrics["val_nll"] for t in outcome.trials
    )
    _, parent = parent_run(tracking_uri, spec.experiment)
    assert parent.data.tags[STUDY_SOURCE_TAG] == "store"
    assert "***" in parent.data.tags[STUDY_STORAGE_TAG]
    for path in (tmp_path / "tune").rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_optuna_dashboard_lists_the_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="digits-dashboard", storage=url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    command = [str(dashboard), url, "--host", "127.0.0.1", "--port", str(port), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:

        def studies() -> list[dict] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    return json.load(r)["study_summaries"]
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()
                return None

        listed = poll_until(studies, 30, "optuna-dashboard answering", interval_s=0.2)
    finally:
        process.terminate()
        process.wait(10)
    assert [s["study_name"] for s in listed] == ["digits-dashboard"]


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def postgres_study_url() -> Iterator[str]:
    """A PostgreSQL schema of its own for Optuna's tables, dropped afterwards."""
    with _postgres_schema() as url:
        yield url


@pytest.fixture
def postgres_store() -> Iterator[tuple[sa.Engine, object, str]]:
    """The service's store migrated in a schema of its own, reached with a password that trust
    auth ignores; the store's schema and the study's beside it are dropped afterwards."""
    from service.store.database import make_engine, upgrade
    from service.store.database import session_factory as make_sessions

    with _postgres_schema() as url:
        url = sa.make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)
        engine = make_engine(url)
        upgrade(engine)
        try:
            yield engine, make_sessions(engine), url
        finally:
            engine.dispose()
            _drop_schema(sa.make_url(beside_store(url)))


@contextlib.contextmanager
def _postgres_schema() -> Iterator[str]:
    from tests.helpers.store import postgres_schema

    schemas = postgres_schema()
    url = next(schemas)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        schemas.close()


def _drop_schema(url: sa.URL) -> None:
    schema = str(url.query["options"]).split("=", 1)[1].split()[0]
    admin = sa.create_engine(url.set(query={}), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()


def _service_schema(engine: sa.Engine) -> tuple[str | None, set[str], list[tuple[str, str]]]:
    from service.store.database import current_revision

    inspector = sa.inspect(engine)
    columns = [(c["name"], str(c["type"])) for c in inspector.get_columns("trials")]
    return current_revision(engine), set(inspector.get_table_names()), columns
