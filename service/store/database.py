"""Engines, sessions and migrations for the store, on SQLite or PostgreSQL.

engine = make_engine("sqlite:///var/gradreg.db")   # or postgresql+psycopg://…
upgrade(engine)                                     # Alembic to head; a no-op when current
sessions = session_factory(engine)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option: begin this connection's transaction with BEGIN IMMEDIATE on SQLite.
WRITE_LOCK = "gradreg_write_lock"
# Any constant works; it keeps two processes from migrating one PostgreSQL database at once.
_MIGRATION_LOCK_ID = 0x67726164


CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 10  # waiting for a free pooled connection
STATEMENT_TIMEOUT_MS = 15_000
POSTGRES_CONNECT_ARGS = {
    "connect_timeout": CONNECT_TIMEOUT_S,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 5_000,  # ms
}


def make_engine(url: str | sa.URL, **engine_options: Any) -> sa.Engine:
    """An engine for ``url``; SQLite is set up so that several processes can write to one file.

    PostgreSQL options such as a search_path travel in the URL (``?options=-csearch_path%3Dx``).
    """
    url = sa.make_url(url)
    if url.get_backend_name() == "sqlite":
        connect_args = engine_options.pop("connect_args", {})
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, **connect_args}, **engine_options
        )
        _configure_sqlite(engine)
        return engine
    engine_options.setdefault("pool_pre_ping", True)
    engine_options.setdefault("pool_timeout", POOL_TIMEOUT_S)
    # A store behind a dropped route must answer 503 in seconds, not hold the API's threads for
    # the OS's TCP timeouts (minutes): connect_timeout bounds a new connection, TCP keepalives
    # and tcp_user_timeout (unacknowledged data) break a pooled one to a dead server, and
    # statement_timeout bounds a query the server does run.
    connect_args = {**POSTGRES_CONNECT_ARGS, **engine_options.pop("connect_args", {})}
    given = url.query.get("options")  # a tuple when the URL repeats it
    parts = [given] if isinstance(given, str) else list(given or ())
    options = " ".join([*parts, f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"])
    url = url.update_query_dict({"options": options})
    return sa.create_engine(url, connect_args=connect_args, **engine_options)


def _configure_sqlite(engine: sa.Engine) -> None:
    # sqlite3's own transaction handling skips BEGIN before SELECT and DDL; SQLAlchemy emits
    # BEGIN itself instead, so reads are consistent and migrations are transactional.
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    # A deferred transaction that reads and then writes fails at once with "database is locked"
    # when another connection wrote in between (the busy timeout cannot help it), so writers
    # take the lock up front.
    @event.listens_for(engine, "begin")
    def on_begin(connection: sa.Connection) -> None:
        immediate = connection.get_execution_options().get(WRITE_LOCK, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def session_factory(engine: sa.Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (the API serialises them then)."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    from alembic.config import Config  # only migrations need it, not every sweep driver

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(url_or_engine: str | sa.URL | sa.Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision``; safe to call on every start, from any process."""
    owned = not isinstance(url_or_engine, sa.Engine)
    engine = url_or_engine if isinstance(url_or_engine, sa.Engine) else make_engine(url_or_engine)
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # SQLite's way to change a table (a migration's batch mode): a copy replaces it,
                # with foreign keys off, or dropping the old table would cascade to its rows'
                # children. The pragma only takes effect outside a transaction.
                _sqlite_pragma(connection, "foreign_keys = OFF")
            connection = connection.execution_options(**{WRITE_LOCK: True})
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:lock)"),
                        {"lock": _MIGRATION_LOCK_ID},
                    )
                from alembic import command

                config = alembic_config()
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
            if sqlite:
                _sqlite_pragma(connection, "foreign_keys = ON")
    finally:
        if owned:
            engine.dispose()


def _sqlite_pragma(connection: sa.Connection, pragma: str) -> None:
    """Run a pragma on the driver's connection itself, outside any transaction (SQLAlchemy would
    begin one first)."""
    connection.connection.driver_connection.execute(f"PRAGMA {pragma}")  # type: ignore[union-attr]


def head_revision() -> str:
    """The revision `upgrade` migrates to by default: the newest migration's."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
