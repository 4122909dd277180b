"""Schemathesis against the running service's own OpenAPI document.

Every operation is fuzzed with valid and invalid requests (schemathesis's positive and negative
modes), with the right token, a wrong one and none. What must hold for every response: no 5xx;
every 4xx is problem+json whose `status` is the response's; status codes and bodies match the
document. Run with `-s` to see the tally that RELIABILITY.md quotes, per operation: the requests
sent in each mode and the examples that were not sent, with why (hypothesis rejected or could
not generate them, or the HTTP client refused them). Every operation must get at least
MIN_PER_OPERATION authenticated, valid requests, and none may go unfuzzed.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import sys
import zipfile

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from hypothesis.statistics import collector as hypothesis_statistics
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.transport import Response
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from service.problems import MEDIA_TYPE
from tests.helpers.api import TOKENS, wait_for

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
# Authenticated, valid requests each operation must get: most of its PLAN examples. An
# operation whose whole input space hypothesis exhausted sooner (nothing but a token to send)
# needs only one.
MIN_PER_OPERATION = 40
POSITIVE_WITH_TOKEN = ("token", GenerationMode.POSITIVE.value)
REAL_SWEEP = "token, real sweep"


def _zip_of(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# POST /v1/code's body (application/zip): schemathesis has no generator for the media type, so
# it gets zips of small modules under names of any shape (the bundle checks' input), and
# arbitrary bytes (not a zip).
ZIP_BODIES = st.one_of(
    st.dictionaries(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=30),
        st.binary(max_size=200),
        max_size=5,
    ).map(_zip_of),
    st.binary(max_size=2000),
)
schemathesis.openapi.media_type("application/zip", ZIP_BODIES)

# (operation label, who, generation mode)
Run = tuple[str, str, str]


@dataclasses.dataclass
class Tally:
    """What each fuzzing run sent, and what it generated or tried but did not send."""

    sent: collections.Counter[Run] = dataclasses.field(default_factory=collections.Counter)
    skipped: dict[Run, collections.Counter[str]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    exhausted: set[Run] = dataclasses.field(default_factory=set)
    statuses: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)

    def run(self, fuzz, run: Run) -> bool:
        """Run `fuzz`, recording hypothesis's rejected examples; False if it was unsatisfiable."""
        statistics: dict = {}
        with hypothesis_statistics.with_value(statistics.update):
            try:
                fuzz()
                satisfiable = True
            except Unsatisfiable:
                self.skipped[run]["unsatisfiable: hypothesis generated no valid example"] += 1
                satisfiable = False
        for phase in ("reuse-phase", "generate-phase"):
            for case in statistics.get(phase, {}).get("test-cases", []):
                if case["status"] in ("invalid", "overrun"):
                    self.skipped[run][_rejection(case)] += 1
        if statistics.get("stopped-because") == "nothing left to do":
            self.exhausted.add(run)
        return satisfiable

    def report(self, labels: list[str]) -> str:
        lines = []
        for label in labels:
            runs = sorted({run for run in [*self.sent, *self.skipped] if run[0] == label})
            sent = ", ".join(
                f"{who}/{mode} {self.sent[(label, who, mode)]}" for _, who, mode in runs
            )
            lines.append(f"  {label}: sent {sum(self.sent[r] for r in runs)} ({sent})")
            for run in runs:
                for reason, n in sorted(self.skipped.get(run, {}).items()):
                    lines.append(f"      not sent ({run[1]}/{run[2]}): {n} x {reason}")
        return "\n".join(lines)


def coverage_problems(tally: Tally, labels: list[str]) -> list[str]:
    """Operations that were not fuzzed enough: none at all, or too few valid authenticated
    requests."""
    problems = []
    for label in labels:
        total = sum(n for run, n in tally.sent.items() if run[0] == label)
        positive = (label, *POSITIVE_WITH_TOKEN)
        needed = 1 if positive in tally.exhausted else MIN_PER_OPERATION
        if total == 0:
            problems.append(f"{label}: skipped entirely (no request sent in any mode)")
        elif tally.sent[positive] < needed:
            problems.append(
                f"{label}: {tally.sent[positive]} valid requests with the token, needs {needed} "
                f"(not sent: {dict(tally.skipped.get(positive, {}))})"
            )
    return problems


def _rejection(case: dict) -> str:
    for event in case["events"]:
        if event.startswith("gave up because"):
            return f"rejected by hypothesis ({event[:120]})"
    return f"rejected by hypothesis ({case['status']})"


def test_coverage_problems_catch_an_operation_the_total_hides():
    labels = ["GET /a", "GET /b", "GET /c", "GET /healthz"]
    tally = Tally()
    tally.sent[("GET /a", *POSITIVE_WITH_TOKEN)] = 600  # the old total count passes
    tally.sent[("GET /b", *POSITIVE_WITH_TOKEN)] = 3
    tally.skipped[("GET /b", *POSITIVE_WITH_TOKEN)]["rejected by hypothesis (invalid)"] = 47
    tally.skipped[("GET /c", *POSITIVE_WITH_TOKEN)]["unsatisfiable: no example"] = 1
    tally.sent[("GET /healthz", *POSITIVE_WITH_TOKEN)] = 1
    tally.exhausted.add(("GET /healthz", *POSITIVE_WITH_TOKEN))
    assert sum(tally.sent.values()) >= MIN_REQUESTS
    problems = coverage_problems(tally, labels)
    assert len(problems) == 2
    assert problems[0].startswith("GET /b: 3 valid requests with the token, needs 40")
    assert "rejected by hypothesis (invalid)" in problems[0]
    assert problems[1] == "GET /c: skipped entirely (no request sent in any mode)"
    assert "47 x rejected by hypothesis (invalid)" in tally.report(labels)


def test_fuzzing_every_route_finds_no_5xx_and_only_problem_json_errors(service):
    schema = schemathesis.openapi.from_url(service.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    labels = [operation.label for operation in operations]
    tally = Tally()
    failures: list[str] = []

    for operation in operations:
        for (who, mode), examples in PLAN.items():
            fuzz = _fuzzer(operation, who, mode, examples, service.url, tally, failures)
            if not tally.run(fuzz, (operation.label, who, mode.value)):
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
                REAL_SWEEP,
                mode,
                EXAMPLES_ON_A_REAL_SWEEP,
                service.url,
                tally,
                failures,
                path_parameters={"sweep_id": finished},
            )
            if not tally.run(fuzz, (operation.label, REAL_SWEEP, mode.value)):
                assert mode is GenerationMode.NEGATIVE  # only the fixed id to vary

    statuses = tally.statuses
    sent = sum(statuses.values())
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    not_sent = sum(sum(reasons.values()) for reasons in tally.skipped.values())
    print(
        f"\nfuzzed {len(operations)} operations with {sent} requests ({not_sent} examples "
        f"not sent); status counts {dict(sorted(statuses.items()))}; 5xx: {server_errors}\n"
        f"{tally.report(labels)}",
        file=sys.stderr,
    )
    assert sent >= MIN_REQUESTS
    assert not (problems := coverage_problems(tally, labels)), "\n".join(problems)
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


def _fuzzer(operation, who, mode, examples, base_url, tally, failures, **fixed):
    run = (operation.label, who, mode.value)

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
        if who in ("token", REAL_SWEEP):
            headers["Authorization"] = VALID
        elif who == "no token":
            headers.pop("Authorization", None)
        case.headers = headers
        try:
            response = case.call(base_url=base_url, timeout=30)
        except (requests.exceptions.InvalidHeader, ValueError, UnicodeError) as error:
            # the client refused to send it (e.g. a header with a newline)
            tally.skipped[run][f"refused by the HTTP client ({type(error).__name__})"] += 1
            return
        tally.sent[run] += 1
        tally.statuses[response.status_code] += 1
        label = f"{who}, {mode.value}: {case.method} {case.formatted_path}"
        problems = _problem_json_issues(response)
        if problems:
            failures.append(f"{label} -> {response.status_code}: {problems}")
        checks = [not_a_server_error]
        if who in ("token", REAL_SWEEP) and mode is GenerationMode.POSITIVE:
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
