"""Abuse of the running service: tokens, specs that try to name code or paths, huge bodies.

Tokens on every route and in every log line are also checked by the fuzzer (test_fuzz.py) and
tests/service/test_api.py; the compose file's unpublished Ray ports by tests/deploy.
"""

from __future__ import annotations

import http.client
import json
import os

import httpx
import pytest

from tests.helpers.api import TOKENS, all_sweeps

pytestmark = pytest.mark.slow

GOOD = {
    "name": "abuse",
    "dataset": {"name": "iris"},
    "method": "map",
    "fixed": {"epochs": 1},
    "budget": {"max_trials": 1},
}
# (what the spec tries, the field that must be named)
ABUSIVE_SPECS = [
    ({"dataset": {"name": "os.system"}}, "dataset.name"),
    ({"dataset": {"name": "__import__('os').system('id')"}}, "dataset.name"),
    ({"model": {"name": "torch.hub.load"}}, "model.name"),
    (
        {"model": {"name": "mlp", "options": {"activation": "os.system"}}},
        "model.options.activation",
    ),
    ({"model": {"name": "mlp", "options": {"__init__": 1}}}, "model.options.__init__"),
    ({"method": "eval"}, "method"),
    ({"fixed": {"epochs": 1, "__class__": 1}}, "fixed.__class__"),
    (
        {"parameters": {"__globals__": {"type": "categorical", "choices": [1]}}},
        "parameters.__globals__",
    ),
    ({"search": {"algorithm": "pickle"}}, "search.algorithm"),
    ({"objectives": [{"metric": "test_nll"}]}, "objectives.0.metric"),
    ({"tracking": {"experiment": "x", "artifact_location": "/etc"}}, "tracking.artifact_location"),
    ({"dataset": {"name": "mnist", "data_dir": "../../etc"}}, "dataset.data_dir"),
    ({"dataset": {"name": "mnist", "data_dir": "/etc"}}, "dataset.data_dir"),
    ({"dataset": {"name": "mnist", "data_dir": "~root"}}, "dataset.data_dir"),
    ({"dataset": {"name": "mnist", "data_dir": "escape"}}, "dataset.data_dir"),  # a symlink out
]


@pytest.fixture(scope="module")
def client(service):
    # A link inside the data root that leads out of it must not smuggle a path through.
    os.symlink("/etc", service.root / "data" / "escape")
    with service.client() as opened:
        yield opened


@pytest.mark.parametrize(("change", "field"), ABUSIVE_SPECS)
def test_a_spec_cannot_name_code_or_paths_outside_the_data_root(client, change, field):
    before = len(all_sweeps(client))
    response = client.post("/v1/sweeps", json=GOOD | change)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in {error["path"] for error in response.json()["errors"]}, response.text
    assert len(all_sweeps(client)) == before  # nothing stored


def test_the_same_spec_without_the_abuse_is_accepted(client):
    response = client.post("/v1/sweeps", json=GOOD, headers={"Idempotency-Key": "abuse-good"})
    assert response.status_code == 202, response.text
    client.post(f"/v1/sweeps/{response.json()['id']}/cancel")


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        f"Basic {TOKENS[0]}",
        f"Token {TOKENS[0]}",
        f"Bearer {TOKENS[0][:-1]}",  # a prefix
        f"Bearer {TOKENS[0]}x",  # an extension
        f"Bearer {TOKENS[0].upper()}",
        f"Bearer {TOKENS[0]},{TOKENS[1]}",  # the configured list itself
        "Bearer " + "a" * 10_000,
    ],
)
def test_only_an_exact_configured_token_gets_in(service, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [("GET", "/v1/sweeps"), ("POST", "/v1/sweeps"), ("GET", "/v1/schema")]:
        response = httpx.request(method, service.url + path, headers=headers, json=GOOD)
        assert response.status_code in (401, 403), (authorization, method, path)
        assert response.headers["content-type"].startswith("application/problem+json")
        # The answer never repeats what was sent, let alone a real token.
        body = response.text
        assert not any(token[:12] in body for token in TOKENS), body
        if authorization and len(authorization) > 12:
            assert authorization.split(" ", 1)[-1][:12] not in body


def test_a_token_in_the_query_string_is_not_a_login(service):
    response = httpx.get(service.url + "/v1/sweeps", params={"access_token": TOKENS[0]})
    assert response.status_code == 401


def test_bodies_over_the_limit_are_refused_declared_or_streamed(service):
    headers = {"Authorization": f"Bearer {TOKENS[0]}"}
    declared = httpx.post(
        service.url + "/v1/sweeps",
        headers=headers,
        content=b" " * 70_000 + json.dumps(GOOD).encode(),
    )
    assert declared.status_code == 413

    def chunks():
        for _ in range(70):
            yield b" " * 1024
        yield json.dumps(GOOD).encode()

    streamed = httpx.post(service.url + "/v1/sweeps", headers=headers, content=chunks())
    assert streamed.status_code == 413, streamed.text
    assert "limited to 65536 bytes" in streamed.json()["detail"]


def test_a_body_nested_too_deeply_is_a_422_not_a_crash(service):
    headers = {"Authorization": f"Bearer {TOKENS[0]}"}
    for body in ["[" * 30_000 + "]" * 30_000, '{"a":' * 10_000 + "1" + "}" * 10_000]:
        response = httpx.post(service.url + "/v1/sweeps", headers=headers, content=body.encode())
        assert response.status_code == 422, response.text
        assert "nested too deeply" in response.json()["errors"][0]["message"]


def test_the_logs_never_hold_a_token(service):
    # After everything above (and the fuzzer, when run first), the API's own log is clean.
    log = service.log_tail(10**8)
    assert log, "the API wrote no log at all"
    assert not any(token in log for token in TOKENS)


@pytest.mark.parametrize(
    ("key", "why"),
    # A blank value reaches the app empty: HTTP strips a field value's surrounding whitespace.
    [("", "at least 1 character"), ("   ", "at least 1 character"), ("k" * 201, "at most 200")],
)
def test_an_empty_blank_or_huge_idempotency_key_is_a_422(service, key, why):
    # http.client sends any value without \r or \n as it is; httpx refuses a blank one itself.
    url = httpx.URL(service.url)
    connection = http.client.HTTPConnection(url.host, url.port, timeout=30)
    try:
        connection.request(
            "POST",
            "/v1/sweeps",
            body=json.dumps(GOOD),
            headers={
                "Authorization": f"Bearer {TOKENS[0]}",
                "Content-Type": "application/json",
                "Idempotency-Key": key,
            },
        )
        response = connection.getresponse()
        status, body = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 422, body
    (error,) = body["errors"]
    assert error["path"] == "header.idempotency-key" and why in error["message"]
