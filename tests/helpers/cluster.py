"""The local cluster's API as its tests use it: submit, read, and wait for a sweep."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from localcluster.harness import drivers_report
from tests.helpers import poll_until
from tests.helpers.api import FINAL


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


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """`poll_until` at the cluster's pace: once a second (each look asks the API)."""
    return poll_until(condition, timeout_s, what, interval_s=1.0)


def finished(api: httpx.Client, sweep_id: str, timeout_s: float = 300) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        state = sweep(api, sweep_id)
        return state if state["status"] in FINAL else None

    # CI prints only this: say what the sweep's driver was doing.
    return poll_until(
        done,
        timeout_s,
        f"sweep {sweep_id} finishing",
        interval_s=2,
        detail=lambda: f"{sweep(api, sweep_id)}\n{drivers_report()}",
    )
