"""Alembic environment for the store; run through `service.store.database.upgrade`.

There is no alembic.ini: the caller hands over an open connection in
``config.attributes["connection"]``; a ``sqlalchemy.url`` main option works too (the
`alembic` command line with ``-x`` is not needed for anything here).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from service.store.models import Base


def run_migrations(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    from service.store.database import make_engine

    engine = make_engine(context.config.get_main_option("sqlalchemy.url"))
    try:
        with engine.begin() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("the store's migrations run online only (service.store.database.upgrade)")
run()
