"""Faults injected into a running service: its store's network cut, its MLflow killed mid-trial.

The other faults of issue 7 live beside the features they test: the API killed mid-sweep and the
driver killed mid-sweep in tests/service/test_api.py, a trial that diverges (NaN) in
tests/sweeps/test_driver.py.
"""

from __future__ import annotations

import time

import httpx
import pytest
import sqlalchemy as sa

from tests.helpers import poll_until
from tests.helpers.api import FINAL, TOKENS, ApiProcess, is_problem, wait_for
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.netns import TestHost
from tests.helpers.proxy import CuttableProxy

pytestmark = pytest.mark.slow


def store_down(response: httpx.Response) -> dict:
    """A 503 problem that names neither the database driver nor a line of code."""
    assert "psycopg" not in response.text
    return is_problem(response, 503)


def test_store_unreachable_is_503_then_service_recovers(service, store_url, tmp_path):
    url = sa.make_url(store_url)
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432)).start()
    through_proxy = url.set(host="127.0.0.1", port=proxy.port)
    api = ApiProcess(
        tmp_path,
        extra_env={
            **service.head_env(),
            "GRADREG_DATABASE_URL": through_proxy.render_as_string(hide_password=False),
            "GRADREG_TRACKING_URI": service.tracking_uri,
        },
    ).start()
    try:
        with api.client() as client:
            assert client.get("/v1/sweeps").status_code == 200

            proxy.cut()
            started = time.monotonic()
            body = store_down(client.get("/v1/sweeps"))
            assert body["detail"] == "the sweep store is unavailable; try again shortly"
            store_down(client.get("/v1/sweeps/" + "0" * 32))
            spec = {"name": "while-down", "dataset": {"name": "iris"}, "method": "map"}
            store_down(client.post("/v1/sweeps", json=spec))
            store_down(client.post("/v1/sweeps/" + "0" * 32 + "/cancel"))

            # /readyz answers from probes a few seconds old: it turns within two intervals.
            def not_ready() -> httpx.Response | None:
                answer = httpx.get(api.url + "/readyz")
                return answer if answer.status_code != 200 else None

            ready = poll_until(not_ready, 10, "readyz saying not ready", interval_s=0.5)
            assert "store: OperationalError" in store_down(ready)["detail"]
            assert httpx.get(api.url + "/healthz").status_code == 200
            assert time.monotonic() - started < 30  # answered, not hung on TCP timeouts
            # Tokens are kept in the store: while it is down no token is checked, so none
            # gets in, and the answer says why (503), not that the token is wrong (401).
            wrong = httpx.get(api.url + "/v1/sweeps", headers={"Authorization": "Bearer no"})
            store_down(wrong)

            proxy.restore()
            poll_until(
                lambda: client.get("/v1/sweeps").status_code == 200,
                30,
                "the API reconnecting to its store",
                interval_s=0.5,
            )
            poll_until(
                lambda: httpx.get(api.url + "/readyz").status_code == 200,
                10,
                "readyz coming back",
                interval_s=0.5,
            )
        assert api.process is not None and api.process.poll() is None
        assert not any(token in api.log_tail(10**7) for token in TOKENS)
    finally:
        api.stop()
        proxy.cut()


def test_mlflow_killed_mid_trial_fails_the_trial_loudly(service, tmp_path):
    mlflow = MlflowServer(tmp_path / "mlflow").start()
    api = ApiProcess(
        tmp_path / "api",
        extra_env={
            "GRADREG_TRACKING_URI": mlflow.url,
            "GRADREG_MAX_ATTEMPTS": "1",
            # MLflow's client otherwise retries a dead server for minutes before it gives up.
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        },
    ).start()
    spec = {
        "name": "mlflow-dies",
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "options": {"hidden": [32]}},
        "method": "map",
        # Far more epochs than it can train before the kill lands (an epoch takes ~20 ms).
        "fixed": {"epochs": 5000, "batch_size": 256, "lr": 0.003, "device": "cpu"},
        "budget": {"max_trials": 1, "max_concurrent_trials": 1},
    }
    try:
        with api.client() as client:
            sweep_id = client.post("/v1/sweeps", json=spec).json()["id"]

            def trial_reported(sweep: dict) -> bool:
                return sweep["counts"].get("running") == 1 and trial_epoch(client, sweep_id) >= 2

            wait_for(client, sweep_id, trial_reported, timeout_s=180)
            mlflow.stop(kill=True)

            finished = wait_for(client, sweep_id, lambda s: s["status"] in FINAL, 180)
            assert finished["status"] == "failed", finished
            (trial,) = client.get(f"/v1/sweeps/{sweep_id}/trials").json()["items"]
            # The trial stopped at its first write to the dead server and the store says why.
            assert trial["state"] == "failed", trial
            assert "MlflowException" in trial["error"], trial
            assert trial["epoch"] < spec["fixed"]["epochs"]
            # The driver failed too, loudly: its reason is the exception, not 20 kB of log.
            assert "MlflowException: API request to" in finished["reason"], finished
            assert len(finished["reason"]) < 2000
            ready = httpx.get(api.url + "/readyz")
            assert ready.status_code == 503 and f"MLflow at {mlflow.url}" in ready.text
    finally:
        api.stop()
        mlflow.stop()


def trial_epoch(client: httpx.Client, sweep_id: str) -> int:
    trials = client.get(f"/v1/sweeps/{sweep_id}/trials").json()["items"]
    return max((t["epoch"] or 0 for t in trials), default=0)


def test_a_store_behind_a_black_hole_is_503_in_bounded_time_then_recovers(own_store_url, tmp_path):
    url = own_store_url
    with TestHost("gr-bh") as host:
        proxy_host, _ = host.link("store")  # the API's route to its store
        _, api_host = host.link("client")  # the tests' route to the API
        proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432), host=proxy_host)
        proxy.start()
        through = url.set(host=proxy_host, port=proxy.port)
        api = ApiProcess(
            tmp_path,
            host=api_host,
            launcher=host.run,
            extra_env={
                "GRADREG_HOST": "0.0.0.0",
                "GRADREG_DATABASE_URL": through.render_as_string(hide_password=False),
            },
        ).start()
        try:
            with api.client() as client:
                assert client.get("/v1/sweeps").status_code == 200  # a pooled connection now
                host.black_hole("store")  # packets vanish: no reset, no refusal
                calls = [
                    ("GET", "/v1/sweeps", None),
                    ("GET", "/v1/sweeps/" + "0" * 32, None),
                    (
                        "POST",
                        "/v1/sweeps",
                        {"name": "bh", "dataset": {"name": "iris"}, "method": "map"},
                    ),
                    ("POST", "/v1/sweeps/" + "0" * 32 + "/cancel", None),
                ]
                for method, path, body in calls:
                    started = time.monotonic()
                    store_down(client.request(method, path, json=body))
                    # connect_timeout, keepalives and tcp_user_timeout bound it (5 s each)
                    assert time.monotonic() - started < 25, (method, path)
                assert httpx.get(api.url + "/healthz", timeout=5).status_code == 200

                host.restore("store")
                poll_until(
                    lambda: client.get("/v1/sweeps").status_code == 200,
                    60,
                    "the API reconnecting to its store",
                    interval_s=1,
                )
        finally:
            api.stop()
            proxy.cut()
