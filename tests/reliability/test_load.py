"""Concurrency against the running service: many submitters, one key many times, many readers.

Run with `-s` for the figures RELIABILITY.md quotes.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid

import httpx
import pytest

from tests.reliability.conftest import all_sweeps, cancel_everything
from tests.service.api import TOKENS, wait_for

pytestmark = pytest.mark.slow

HEADERS = {"Authorization": f"Bearer {TOKENS[0]}"}
SUBMITTERS = 200
SAME_KEY_SENDERS = 50
READERS = 50
READ_SECONDS = 10.0


def tiny_spec(tag: str) -> dict:
    return {
        "name": "load",
        "tags": [tag],
        "dataset": {"name": "iris"},
        "method": "map",
        "fixed": {"epochs": 1, "device": "cpu"},
        "budget": {"max_trials": 1, "max_concurrent_trials": 1},
    }


async def post_all(url: str, bodies_and_keys: list[tuple[dict, str]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies_and_keys))
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60, limits=limits) as c:
        return await asyncio.gather(
            *(
                c.post("/v1/sweeps", json=body, headers={"Idempotency-Key": key})
                for body, key in bodies_and_keys
            )
        )


def test_200_concurrent_posts_with_distinct_keys_make_exactly_200_sweeps(service):
    tag = f"distinct-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    responses = asyncio.run(
        post_all(service.url, [(tiny_spec(tag), f"{tag}-{i}") for i in range(SUBMITTERS)])
    )
    elapsed = time.perf_counter() - started
    assert [r.status_code for r in responses] == [202] * SUBMITTERS, {
        r.status_code: r.text for r in responses if r.status_code != 202
    }
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == SUBMITTERS
    with service.client() as client:
        stored = all_sweeps(client, tag=tag)
        assert {s["id"] for s in stored} == ids
        # The queue holds them: never more than GRADREG_MAX_ACTIVE_SWEEPS=1 driver at once.
        active = [s for s in stored if s["status"] in ("submitted", "running", "cancelling")]
        assert len(active) <= 1
    print(f"\n{SUBMITTERS} concurrent POSTs: all 202 in {elapsed:.2f} s", file=sys.stderr)
    cancel_everything(service)


def test_one_key_sent_50_times_at_once_makes_one_sweep(service):
    tag = f"same-{uuid.uuid4().hex[:8]}"
    key = f"{tag}-key"
    responses = asyncio.run(post_all(service.url, [(tiny_spec(tag), key)] * SAME_KEY_SENDERS))
    assert [r.status_code for r in responses] == [202] * SAME_KEY_SENDERS
    assert len({r.json()["id"] for r in responses}) == 1
    replayed = [r for r in responses if r.headers.get("Idempotent-Replayed") == "true"]
    assert len(replayed) == SAME_KEY_SENDERS - 1
    with service.client() as client:
        assert len(all_sweeps(client, tag=tag)) == 1
        # The same key with another body is a conflict, never a second sweep.
        other = tiny_spec(tag) | {"name": "something-else"}
        conflict = client.post("/v1/sweeps", json=other, headers={"Idempotency-Key": key})
        assert conflict.status_code == 409 and "already used" in conflict.json()["detail"]
        assert len(all_sweeps(client, tag=tag)) == 1
    cancel_everything(service)


def test_50_concurrent_readers_while_a_sweep_runs(service):
    tag = f"readers-{uuid.uuid4().hex[:8]}"
    with service.client() as client:
        sweep_id = client.post("/v1/sweeps", json=tiny_spec(tag) | {"name": "read-me"}).json()["id"]
        wait_for(client, sweep_id, lambda s: s["status"] in ("running", "succeeded"), 120)
    latencies, statuses = asyncio.run(read_for(service.url, sweep_id))
    assert statuses == {200: len(latencies)}
    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p99 = ordered[int(0.99 * (len(ordered) - 1))]
    print(
        f"\n{READERS} readers for {READ_SECONDS:.0f} s while a sweep ran: {len(ordered)} reads, "
        f"{len(ordered) / READ_SECONDS:.0f}/s, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms",
        file=sys.stderr,
    )
    cancel_everything(service)


async def read_for(url: str, sweep_id: str) -> tuple[list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + READ_SECONDS
    paths = [f"/v1/sweeps/{sweep_id}", f"/v1/sweeps/{sweep_id}/trials", "/v1/sweeps?limit=20"]

    async def reader(client: httpx.AsyncClient, offset: int) -> None:
        turn = offset
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            response = await client.get(paths[turn % len(paths)])
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            turn += 1

    limits = httpx.Limits(max_connections=READERS)
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60, limits=limits) as c:
        await asyncio.gather(*(reader(c, i) for i in range(READERS)))
    return latencies, statuses
