"""Schemathesis against the running service's own OpenAPI document.

Every operation is fuzzed with valid and invalid requests (schemathesis's positive and negative
modes), with the right token, a wrong one and none. What must hold for every response: no 5xx;
every 4xx is problem+json whose `status` is the response's; status codes and bodies match the
document. Run with `-s` to see the tally that RELIABILITY.md quotes.
"""

from __future__ import annotations

import collections
import json
import sys

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.transport import Response
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from service.problems import MEDIA_TYPE
from tests.service.api import TOKENS, wait_for

pytestmark = pytest.mark.slow

# (who, generation mode) -> examples per operation: about 1,000 requests in all.
PLAN = {
    ("token", GenerationMode.POSITIVE): 50,
    ("token", GenerationMode.NEGATIVE): 30,
    ("no token", GenerationMode.POSITIVE): 4,
    ("no token", GenerationMode.NEGATIVE): 4,
    ("wrong token", GenerationMode.POSITIVE): 4,
    ("wrong token", GenerationMode.NEGATIVE): 4,
}
EXAMPLES_ON_A_REAL_SWEEP = 15
VALID = f"Bearer {TOKENS[0]}"
MIN_REQUESTS = 500


def test_fuzzing_every_route_finds_no_5xx_and_only_problem_json_errors(service):
    schema = schemathesis.openapi.from_url(service.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []

    for operation in operations:
        for (who, mode), examples in PLAN.items():
            fuzz = _fuzzer(operation, who, mode, examples, service.url, statuses, failures)
            try:
                fuzz()
            except Unsatisfiable:
                # An operation with no parameters and no body (GET /healthz) has nothing to
                # make invalid.
                assert mode is GenerationMode.NEGATIVE and not operation.path_parameters

    # Random ids only ever reach a 404; these reach the routes' real work. Resuming would
    # restart the sweep (and its event stream would then never end), so it is left out here.
    finished = _finished_sweep(service)
    for operation in operations:
        if "{sweep_id}" not in operation.path or operation.path.endswith("/resume"):
            continue
        for mode in GenerationMode:
            fuzz = _fuzzer(
                operation,
                "token",
                mode,
                EXAMPLES_ON_A_REAL_SWEEP,
                service.url,
                statuses,
                failures,
                path_parameters={"sweep_id": finished},
            )
            try:
                fuzz()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # only the fixed id to vary

    sent = sum(statuses.values())
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    print(
        f"\nfuzzed {len(operations)} operations with {sent} requests; "
        f"status counts {dict(sorted(statuses.items()))}; 5xx: {server_errors}",
        file=sys.stderr,
    )
    assert sent >= MIN_REQUESTS
    assert not failures, "\n\n".join(failures[:10])
    assert server_errors == 0
    assert not any(token in service.log_tail(10**7) for token in TOKENS)


def _finished_sweep(service) -> str:
    spec = {
        "name": "fuzz-target",
        "dataset": {"name": "iris"},
        "method": "map",
        "fixed": {"epochs": 1, "device": "cpu"},
        "budget": {"max_trials": 1, "max_concurrent_trials": 1},
    }
    with service.client() as client:
        created = client.post("/v1/sweeps", json=spec)
        assert created.status_code == 202, created.text
        sweep_id = created.json()["id"]
        client.post(f"/v1/sweeps/{sweep_id}/cancel")
        wait_for(client, sweep_id, lambda sweep: sweep["status"] == "cancelled", timeout_s=120)
    return sweep_id


def _fuzzer(operation, who, mode, examples, base_url, statuses, failures, **fixed):

    @seed(20261126)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def fuzz(case) -> None:
        # The document declares bearer auth, so schemathesis generates an Authorization header
        # (a random, wrong token); it is replaced by the valid one, or dropped.
        headers = dict(case.headers or {})
        if who == "token":
            headers["Authorization"] = VALID
        elif who == "no token":
            headers.pop("Authorization", None)
        case.headers = headers
        try:
            response = case.call(base_url=base_url, timeout=30)
        except (requests.exceptions.InvalidHeader, ValueError, UnicodeError):
            return  # the client refused to send it (e.g. a header with a newline)
        statuses[response.status_code] += 1
        label = f"{who}, {mode.value}: {case.method} {case.formatted_path}"
        problems = _problem_json_issues(response)
        if problems:
            failures.append(f"{label} -> {response.status_code}: {problems}")
        checks = [not_a_server_error]
        if who == "token" and mode is GenerationMode.POSITIVE:
            checks += [status_code_conformance, response_schema_conformance]
        try:
            case.validate_response(response, checks=checks)
        except (Exception, FailureGroup) as error:
            failures.append(f"{label} -> {response.status_code}: {error}")

    return fuzz


def _problem_json_issues(response: Response) -> str | None:
    if not 400 <= response.status_code < 600:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    if not content_type.startswith(MEDIA_TYPE):
        return f"content-type {content_type!r}, not {MEDIA_TYPE}"
    body = json.loads(response.content)
    if body.get("status") != response.status_code or not body.get("title"):
        return f"problem body without a matching status and a title: {body}"
    return None
