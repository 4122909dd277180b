"""Store fixtures: a migrated database per test, on SQLite and on PostgreSQL; and the real app
served in-process for the client's tests (`live_api`).

PostgreSQL comes from GRADREG_TEST_POSTGRES_URL, else the local server (trust auth, database
`test`). Each test gets a fresh schema `gradreg_<random>`, reached through the URL's search_path
option, so the migrations create their tables there and parallel runs never meet; it is dropped
afterwards. Without a reachable server the PostgreSQL cases fail, saying why.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.store.database import make_engine, upgrade
from service.store.database import session_factory as make_session_factory
from tests.helpers.api import LiveApi, serve_in_process
from tests.helpers.store import postgres_schema


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


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """The real app (`service.app.create_app`: its routes, errors and middleware) on a loopback
    port in this process, with a SQLite store and without Ray: nothing listens at its jobs URL,
    so the sweeps it is sent stay pending. Tests put sweeps in other states through
    ``sessions``."""
    with serve_in_process(tmp_path_factory.mktemp("live-api")) as live:
        yield live
