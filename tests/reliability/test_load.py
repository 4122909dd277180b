"""Concurrency against the running service: many submitters, one key many times, many readers.

Run with `-s` for the figures RELIABILITY.md quotes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import sys
import time
import uuid

import httpx
import pytest

from tests.helpers.api import TOKENS, all_sweeps, cancel_everything, wait_for

pytestmark = pytest.mark.slow

HEADERS = {"Authorization": f"Bearer {TOKENS[0]}"}
SUBMITTERS = 200
SAME_KEY_SENDERS = 50
READERS = 50
USERS = 5
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


def lab_users(service, count: int) -> list[tuple[str, str]]:
    """``count`` members of their own, each with a token: (name, token)."""
    users = []
    with service.client() as admin:
        for index in range(count):
            name = f"reader{index}-{uuid.uuid4().hex[:6]}"
            assert admin.post("/v1/users", json={"name": name}).status_code == 201
            users.append((name, admin.post(f"/v1/users/{name}/tokens", json={}).json()["token"]))
    return users


def test_50_concurrent_readers_of_5_users_while_a_sweep_runs(service):
    tag = f"readers-{uuid.uuid4().hex[:8]}"
    targets = []
    for name, token in lab_users(service, USERS):
        with service.client(token) as client:
            posted = client.post("/v1/sweeps", json=tiny_spec(tag) | {"name": f"read-{name}"})
            targets.append(Target(name, token, posted.json()["id"]))
    with service.client() as client:  # the first runs; the others wait behind it
        wait_for(
            client, targets[0].sweep_id, lambda s: s["status"] in ("running", "succeeded"), 120
        )
    reads = asyncio.run(read_for(service.url, targets))
    failed = [r for r in reads if r.status != 200]
    assert not failed, (
        f"{len(failed)} of {len(reads)} reads not answered 200: "
        f"{[(r.path, r.status or r.error) for r in failed[:10]]}\n{service.log_tail()}"
    )
    # Under load too, each user's listing holds their own sweeps only.
    leaks = [r for r in reads if r.owners is not None and r.owners - {r.user}]
    listings = [r for r in reads if r.owners is not None]
    assert listings and not leaks, [(r.user, r.owners) for r in leaks[:5]]
    # RFC 9112 lets a client resend an idempotent request on a reused connection closed before
    # any answer came (a browser does); a server that did that often would still be broken.
    resent = [r for r in reads if r.resent_after]
    assert len(resent) <= max(1, len(reads) // 100), (
        f"{len(resent)} of {len(reads)} reads had their connection dropped: "
        f"{[r.resent_after for r in resent[:10]]}\n{service.log_tail()}"
    )
    ordered = sorted(r.seconds for r in reads)
    p50 = statistics.median(ordered)
    p99 = ordered[int(0.99 * (len(ordered) - 1))]
    print(
        f"\n{READERS} readers of {USERS} users for {READ_SECONDS:.0f} s while a sweep ran: "
        f"{len(ordered)} reads, {len(ordered) / READ_SECONDS:.0f}/s, p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, {len(resent)} resent after a dropped connection, "
        f"{len(listings)} listings, 0 of another user's sweeps",
        file=sys.stderr,
    )
    cancel_everything(service)


@dataclasses.dataclass(frozen=True)
class Target:
    user: str
    token: str
    sweep_id: str


@dataclasses.dataclass
class Read:
    path: str
    seconds: float
    status: int | None = None
    error: str | None = None
    resent_after: str | None = None
    user: str = ""
    owners: set[str] | None = None  # a listing's: the owners of the sweeps it held


async def read_for(url: str, targets: list[Target]) -> list[Read]:
    """READERS readers for READ_SECONDS, reader i as user i % len(targets), each reading its
    user's sweep, its trials and its user's listing in turn."""
    reads: list[Read] = []
    deadline = time.perf_counter() + READ_SECONDS

    async def read(client: httpx.AsyncClient, path: str, user: str) -> Read:
        started = time.perf_counter()
        dropped = None
        try:
            try:
                response = await client.get(path)
            except (httpx.ReadError, httpx.RemoteProtocolError) as error:
                dropped = repr(error)
                response = await client.get(path)
        except httpx.TransportError as error:
            failure = f"{dropped}, then {error!r}" if dropped else repr(error)
            return Read(path, time.perf_counter() - started, error=failure, user=user)
        seconds = time.perf_counter() - started
        owners = None
        if path.startswith("/v1/sweeps?") and response.status_code == 200:
            owners = {item["owner"] for item in response.json()["items"]}
        return Read(path, seconds, response.status_code, None, dropped, user, owners)

    async def reader(client: httpx.AsyncClient, target: Target, offset: int) -> None:
        paths = [
            f"/v1/sweeps/{target.sweep_id}",
            f"/v1/sweeps/{target.sweep_id}/trials",
            "/v1/sweeps?limit=20",
        ]
        turn = offset
        while time.perf_counter() < deadline:
            reads.append(await read(client, paths[turn % len(paths)], target.user))
            turn += 1

    limits = httpx.Limits(max_connections=READERS)
    clients = [
        httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {target.token}"},
            timeout=60,
            limits=limits,
        )
        for target in targets
    ]
    try:
        await asyncio.gather(
            *(
                reader(clients[i % len(targets)], targets[i % len(targets)], i)
                for i in range(READERS)
            )
        )
    finally:
        for client in clients:
            await client.aclose()
    return reads
