"""The local cluster (localcluster/), started once for this package's tests and stopped after
them, so that its idle Ray nodes do not slow the rest of the suite.

Every process is real: PostgreSQL, moto's S3 server, MLflow's server, a Ray head and two GPU
workers in network namespaces of their own, and the API. It needs root, as CI has.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from localcluster.harness import API_URL, Cluster, drivers_report

FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("the local cluster gives its nodes network namespaces, which needs root")
    harness = Cluster(state=tmp_path_factory.mktemp("cluster"))
    harness.up()
    try:
        yield harness
    finally:
        harness.down()
    # make cluster-down's promise: nothing it started is left running.
    assert harness.leftovers() == []


@pytest.fixture
def api(cluster: Cluster) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {cluster.api_token}"}
    with httpx.Client(base_url=API_URL, headers=headers, timeout=30) as client:
        yield client


def submit(api: httpx.Client, spec: dict[str, Any]) -> str:
    response = api.post("/v1/sweeps", json=spec)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def sweep(api: httpx.Client, sweep_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/sweeps/{sweep_id}")
    assert response.status_code == 200, response.text
    return response.json()


def trials(api: httpx.Client, sweep_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/v1/sweeps/{sweep_id}/trials", params={"limit": 500})
    assert response.status_code == 200, response.text
    return response.json()["items"]


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(interval_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def finished(api: httpx.Client, sweep_id: str, timeout_s: float = 300) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        state = sweep(api, sweep_id)
        return state if state["status"] in FINAL else None

    try:
        return wait_until(done, timeout_s, f"sweep {sweep_id} finishing", interval_s=2)
    except AssertionError as error:
        # CI prints only this: say what the sweep's driver was doing.
        raise AssertionError(f"{error}: {sweep(api, sweep_id)}\n{drivers_report()}") from None
