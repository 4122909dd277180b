"""Readiness: whether the store, Ray and MLflow answer, probed off the request path.

`/readyz` is unauthenticated, and its probes are slow when something is down (MLflow's times
out after 2 s, Ray's lists every job). So a background thread probes every ``interval_s`` and
`/readyz` only reads the latest results: a flood of `/readyz` costs nothing, and it can never
starve the authenticated routes of the thread pool they share. Each component's reason is a
short sentence, not a dependency's raw error text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import sqlalchemy as sa

from service.launcher import RayJobs

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 2.0
Probe = Callable[[], str | None]  # None when the component answers, else why not


@dataclass(frozen=True)
class Snapshot:
    problems: dict[str, str]  # component -> reason, for those that did not answer
    checked: tuple[str, ...]
    at: float  # time.monotonic() of the probe

    @property
    def ready(self) -> bool:
        return not self.problems

    def age_s(self) -> float:
        return time.monotonic() - self.at


class Readiness:
    def __init__(self, probes: dict[str, Probe], interval_s: float = 5.0) -> None:
        self.probes = probes
        self.interval_s = interval_s
        self._latest: Snapshot | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def probe_now(self) -> Snapshot:
        problems = {}
        for name, probe in self.probes.items():
            try:
                reason = probe()
            except Exception as error:  # a probe that breaks says so, the others still run
                log.warning("readiness probe %s failed", name, exc_info=True)
                reason = f"{name}: probe failed ({type(error).__name__})"
            if reason:
                problems[name] = reason
        self._latest = Snapshot(problems, tuple(self.probes), time.monotonic())
        return self._latest

    def latest(self) -> Snapshot:
        return self._latest if self._latest is not None else self.probe_now()

    def start(self) -> None:
        self.probe_now()
        self._thread = threading.Thread(target=self._loop, name="readiness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stopping.wait(self.interval_s):
            self.probe_now()


def answering(what: str, call: Callable[[], object]) -> Probe:
    """A probe that calls ``call``: fine if it returns, and ``what: <error type>`` if it raises."""

    def probe() -> str | None:
        try:
            call()
        except Exception as error:
            return f"{what}: {type(error).__name__}"
        return None

    return probe


def store_probe(engine: sa.Engine) -> Probe:
    def select_one() -> None:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    return answering("store", select_one)


def ray_probe(jobs: RayJobs) -> Probe:
    # The client is made on first use, so it is looked up at each probe, not now.
    return answering(f"Ray jobs API at {jobs.dashboard_url}", lambda: jobs.client.get_version())


def mlflow_probe(tracking_uri: str) -> Probe:
    def probe() -> str | None:
        return mlflow_problem(tracking_uri)

    return probe


def mlflow_problem(tracking_uri: str) -> str | None:
    """None if the trials can record to ``tracking_uri``, else why not."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("http", "https"):
        try:
            answer = httpx.get(f"{tracking_uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError as error:
            return f"MLflow at {tracking_uri}: {type(error).__name__}"
        if answer.status_code != 200:
            return f"MLflow at {tracking_uri}: /health answered {answer.status_code}"
        return None
    if parsed.scheme == "sqlite":
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            return f"MLflow database folder {folder} does not exist"
        return None
    return None  # other stores (e.g. PostgreSQL URIs) are checked by the trials themselves
