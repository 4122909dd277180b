"""Which errors the API calls 'try again' (503) and which are its own bugs (500)."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service import problems

RAISED = {
    "operational": OperationalError("SELECT 1", {}, Exception("server closed the connection")),
    "interface": InterfaceError("SELECT 1", {}, Exception("connection already closed")),
    "pool": PoolTimeout("QueuePool limit of size 5 overflow 10 reached"),
    "integrity": IntegrityError("INSERT", {}, Exception("duplicate key value violates")),
    "programming": ProgrammingError("SELEC", {}, Exception("syntax error at or near SELEC")),
}


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    problems.install(app)

    @app.get("/raise/{kind}")
    def _raise(kind: str) -> None:
        raise RAISED[kind]

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("kind", ["operational", "interface", "pool"])
def test_a_store_that_cannot_be_reached_is_503(client, kind):
    response = client.get(f"/raise/{kind}")
    assert response.status_code == 503
    assert response.json()["detail"] == "the sweep store is unavailable; try again shortly"


@pytest.mark.parametrize("kind", ["integrity", "programming"])
def test_a_query_the_store_refuses_is_a_500_with_no_trace_in_the_body(client, kind, caplog):
    with caplog.at_level(logging.ERROR, logger="service.problems"):
        response = client.get(f"/raise/{kind}")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith(problems.MEDIA_TYPE)
    assert response.json()["detail"] == "internal error; it has been logged"
    assert "Traceback" not in response.text and "SELEC" not in response.text
    logged = [r for r in caplog.records if r.exc_info]  # the log keeps the stack trace
    assert logged and type(RAISED[kind]).__name__ in logged[-1].exc_text
