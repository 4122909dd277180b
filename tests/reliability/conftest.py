"""One real service for the reliability tests: uvicorn, its Ray head, MLflow, PostgreSQL.

Its caps keep whatever the fuzzer or the load tests manage to submit tiny, and one sweep's
driver runs at a time (the rest queue), so hundreds of accepted sweeps never start hundreds of
Ray Jobs on a 2-core machine. Whatever is still queued or running at the end is cancelled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.helpers.api import ApiProcess, cancel_everything
from tests.helpers.store import postgres_schema

CAPS = {
    "GRADREG_MAX_ACTIVE_SWEEPS": "1",
    "GRADREG_MAX_TRIALS": "2",
    "GRADREG_MAX_CONCURRENT_TRIALS": "1",
    "GRADREG_MAX_EPOCHS": "2",
    "GRADREG_MAX_TIME_BUDGET_S": "60",
    "GRADREG_CANCEL_GRACE_S": "5",
    # The load tests submit hundreds of sweeps as one user; their per-user quotas are not
    # what these tests measure (tests/service/test_users.py tests them).
    "GRADREG_QUOTA_ACTIVE_SWEEPS": "1000",
    "GRADREG_QUOTA_QUEUED_SWEEPS": "1000",
}


@pytest.fixture(scope="package")
def store_url() -> Iterator[str]:
    """A PostgreSQL schema of the package's own, as the service's GRADREG_DATABASE_URL."""
    with contextlib.contextmanager(postgres_schema)() as url:
        yield url.render_as_string(hide_password=False)


@pytest.fixture
def own_store_url() -> Iterator[sa.URL]:
    """A schema of one test's own, for a test that starts an API of its own: two APIs on one
    store each reconcile the other's sweeps against their own Ray heads, and stop the jobs
    they did not submit (a CI failure: the shared service was up)."""
    with contextlib.contextmanager(postgres_schema)() as url:
        yield url


@pytest.fixture(scope="package")
def service(tmp_path_factory, store_url) -> Iterator[ApiProcess]:
    root = tmp_path_factory.mktemp("reliability")
    (root / "data").mkdir()
    env = {**CAPS, "GRADREG_DATABASE_URL": store_url, "GRADREG_DATA_DIR": str(root / "data")}
    process = ApiProcess(root, extra_env=env).start()
    try:
        yield process
    finally:
        try:
            cancel_everything(process)
        finally:
            process.stop()
