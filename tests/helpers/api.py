"""A real API process for the end-to-end tests: `python -m service` with its own Ray head."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from service.launcher import free_port

TOKENS = ("token-one-" + "a" * 24, "token-two-" + "b" * 24)
FINAL = ("succeeded", "failed", "cancelled")


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
        deadline = time.monotonic() + timeout_s
        path = "/readyz" if ready else "/healthz"
        while True:
            assert self.process.poll() is None, self.log_tail()
            try:
                if httpx.get(self.url + path, timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"API not up in {timeout_s} s\n{self.log_tail()}"
            time.sleep(0.5)

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


def wait_for(client: httpx.Client, sweep_id: str, predicate, timeout_s: float = 240) -> dict:
    """Poll a sweep until ``predicate(sweep)``; fail with its last state otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
        if predicate(sweep):
            return sweep
        assert time.monotonic() < deadline, f"gave up waiting; last state: {sweep}"
        time.sleep(0.5)
