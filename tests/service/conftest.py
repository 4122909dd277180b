"""Store fixtures: a migrated database per test, on SQLite and on PostgreSQL.

PostgreSQL comes from GRADREG_TEST_POSTGRES_URL, else the local server (trust auth, database
`test`). Each test gets a fresh schema `gradreg_<random>`, reached through the URL's search_path
option, so the migrations create their tables there and parallel runs never meet; it is dropped
afterwards. Without a reachable server the PostgreSQL cases fail, saying why.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.store.database import make_engine, upgrade
from service.store.database import session_factory as make_session_factory

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


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[sa.URL]:
    """An empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield sa.make_url(f"sqlite:///{tmp_path / 'store.db'}")
    else:
        yield from postgres_schema()


@pytest.fixture
def engine(store_url: sa.URL) -> Iterator[sa.Engine]:
    """An engine on a database migrated to head."""
    engine = make_engine(store_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine: sa.Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)
