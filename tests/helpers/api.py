"""A real API process for the end-to-end tests: `python -m service` with its own Ray head."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from service.launcher import free_port
from service.store.database import make_engine, session_factory
from tests.helpers import poll_until

TOKENS = ("token-one-" + "a" * 24, "token-two-" + "b" * 24)
FINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class LiveApi:
    """The real app served in the test process (tests/service/conftest.py's ``live_api``)."""

    url: str
    token: str
    sessions: sessionmaker[Session]  # on the app's own store


@contextmanager
def serve_in_process(root: Path, **settings: Any) -> Iterator[LiveApi]:
    """The real app (`service.app.create_app`) served on a loopback port in this process, its
    SQLite store and MLflow under ``root``, without Ray (nothing listens at its jobs URL, so
    the sweeps it is sent stay pending); ``settings`` go over ServiceSettings' own."""
    import uvicorn

    from service.app import create_app
    from service.settings import ServiceSettings

    token = "live-token-" + "d" * 24
    port = free_port()
    config = ServiceSettings(
        **{
            "host": "127.0.0.1",
            "port": port,
            "api_tokens": token,
            "var_dir": root / "var",
            "database_url": f"sqlite:///{root / 'service.db'}",
            "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "ray_jobs_url": f"http://127.0.0.1:{free_port()}",
            "reconcile_interval_s": 60,
            "readiness_interval_s": 60,
            **settings,
        }
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="live-api", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def live() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    engine = make_engine(config.resolved_database_url())
    try:
        poll_until(live, 60, "the in-process API answering /healthz")
        yield LiveApi(url, token, session_factory(engine))
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        engine.dispose()


@dataclass
class ApiProcess:
    root: Path
    extra_env: dict[str, str | None] = field(default_factory=dict)  # None: unset it
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    host: str = "127.0.0.1"  # where the tests reach it
    launcher: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", NAME): a test host of its own

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def var_dir(self) -> Path:
        return self.root / "var"

    @property
    def tracking_uri(self) -> str:
        configured = self.extra_env.get("GRADREG_TRACKING_URI")
        return configured or f"sqlite:///{self.var_dir}/mlflow.db"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "GRADREG_VAR_DIR": str(self.var_dir),
            "GRADREG_PORT": str(self.port),
            "GRADREG_API_TOKENS": ",".join(TOKENS),
            "GRADREG_RECONCILE_INTERVAL_S": "1",
            "GRADREG_CANCEL_GRACE_S": "20",
            "OMP_NUM_THREADS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        for key, value in self.extra_env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def start(self, ready: bool = True, timeout_s: float = 120) -> ApiProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "api.log", "ab")  # noqa: SIM115 (kept open for the process)
        self.process = subprocess.Popen(
            [*self.launcher, sys.executable, "-m", "service"],
            cwd=self.root,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        path = "/readyz" if ready else "/healthz"

        def up() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log_tail()
            try:
                return httpx.get(self.url + path, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        poll_until(up, timeout_s, f"the API answering {path}", 0.5, detail=self.log_tail)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.process.wait(timeout=90)

    def log_tail(self, chars: int = 4000) -> str:
        path = self.root / "api.log"
        return path.read_bytes().decode(errors="replace")[-chars:] if path.exists() else ""

    def client(self, token: str | None = TOKENS[0]) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def head_state(self) -> dict[str, Any]:
        return json.loads((self.var_dir / "ray" / "head.json").read_text())

    def head_env(self) -> dict[str, str]:
        """Settings for a second API on this one's Ray head, so it starts no head of its own."""
        return {
            "GRADREG_RAY_JOBS_URL": self.head_state()["dashboard_url"],
            "GRADREG_RAY_AUTH_TOKEN_PATH": str(self.var_dir / "ray" / "auth_token"),
        }


def is_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The body of a problem+json answer with this status; it never carries a stack trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "Traceback" not in response.text
    body = response.json()
    assert body["status"] == status and body["title"]
    return body


def wait_for(
    client: httpx.Client,
    sweep_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout_s: float = 240,
) -> dict:
    """Poll a sweep until ``predicate(sweep)``; fail with its last state otherwise."""
    last: list[dict[str, Any]] = []

    def matching() -> dict[str, Any] | None:
        sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
        last[:] = [sweep]
        return sweep if predicate(sweep) else None

    return poll_until(
        matching,
        timeout_s,
        f"sweep {sweep_id} as awaited",
        interval_s=0.5,
        detail=lambda: f"its last state: {last[-1] if last else None}",
    )


def small_sweep(name: str, *, epochs: int = 2, trials: int = 3, concurrent: int = 2) -> dict:
    """A digits sweep of a few trials of a few epochs, tagged e2e and its name."""
    return {
        "name": name,
        "tags": ["e2e", name],
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "options": {"hidden": [32]}},
        "method": "vl-uniform",
        "fixed": {"epochs": epochs, "batch_size": 256, "lr": 0.003, "device": "cpu"},
        "parameters": {
            "noise_scale": {"type": "float", "low": 0.001, "high": 0.1, "scale": "log"},
            "prior_variance": {"type": "float", "low": 0.1, "high": 10.0, "scale": "log"},
        },
        "search": {"algorithm": "random", "seed": 0},
        "budget": {"max_trials": trials, "max_concurrent_trials": concurrent},
        "resources": {"cpu": 1},
    }


def all_sweeps(
    client: httpx.Client, status: str | None = None, tag: str | None = None
) -> list[dict]:
    """Every sweep the API lists (with this status and tag), page after page."""
    found: list[dict] = []
    cursor = None
    while True:
        params = {
            "limit": 500,
            **({"status": status} if status else {}),
            **({"tag": tag} if tag else {}),
        }
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/sweeps", params=params).json()
        found.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return found


def cancel_everything(service: ApiProcess, timeout_s: float = 120) -> None:
    """Cancel every unfinished sweep and wait until none is active; fail naming those left."""
    unfinished: list[dict] = []

    def none_active() -> bool:
        unfinished[:] = [
            sweep
            for status in ("pending", "submitted", "running", "cancelling")
            for sweep in all_sweeps(client, status)
        ]
        for sweep in unfinished:
            if sweep["status"] != "cancelling":
                client.post(f"/v1/sweeps/{sweep['id']}/cancel")
        return not unfinished

    with service.client() as client:
        poll_until(
            none_active,
            timeout_s,
            "every sweep cancelled",
            interval_s=1,
            detail=lambda: f"still active: {[(s['id'], s['status']) for s in unfinished]}",
        )


def read_events(api: ApiProcess, sweep_id: str) -> list[tuple[str, dict]]:
    """A sweep's whole event stream, (event kind, data) in order, read until it ends."""
    events = []
    with (
        api.client() as client,
        client.stream("GET", f"/v1/sweeps/{sweep_id}/events", timeout=300) as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    return events


def routes_app(sessions: sessionmaker[Session], token: str, **settings: Any) -> Any:
    """The sweeps routes alone (no Ray, no reconciler) on ``sessions``' store, with ``token``
    the bootstrap admin's: how the store's tests call the routes in process."""
    from fastapi import FastAPI

    from service import problems
    from service.app import attach_store
    from service.routes.sweeps import router as sweeps_router
    from service.routes.users import router as users_router
    from service.settings import ServiceSettings

    app = FastAPI()
    problems.install(app)
    app.include_router(sweeps_router)
    app.include_router(users_router)
    attach_store(app, ServiceSettings(api_tokens=token, **settings), sessions, b"test-token-key")
    return app
