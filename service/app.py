"""The FastAPI application: settings, store, Ray Jobs and the reconciler wired together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
import sqlalchemy as sa
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import openapi, problems
from service.launcher import LocalRayHead, RayJobs
from service.readiness import Readiness, mlflow_probe, ray_probe, store_probe
from service.reconciler import Reconciler
from service.redaction import redact_tokens_in_logs
from service.routes import meta, sweeps
from service.settings import SECRET_VARIABLES, ServiceSettings, write_secret
from service.store.database import make_engine, session_factory, upgrade
from sweeps import Limits

log = logging.getLogger(__name__)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Sync routes run in AnyIO's thread pool. Its default 40 threads fight over the GIL and
        # the connection pool: with 50 clients, throughput fell to half of one client's.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        # Here, not at import: uvicorn has set up its log handlers by the time the app starts.
        redact_tokens_in_logs(settings.tokens)
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.resolved_database_url())
        upgrade(engine)
        head = None
        jobs_url = settings.ray_jobs_url
        if jobs_url is None:
            head = LocalRayHead(settings.var_dir / "ray" / "head.json", withheld=SECRET_VARIABLES)
            jobs_url = head.start()
            log.info("started a local Ray head; jobs API at %s", jobs_url)
        tracking_uri = settings.resolved_tracking_uri()
        jobs = RayJobs(jobs_url, settings.python, _driver_env(settings, tracking_uri))
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessions = session_factory(engine)
        app.state.limits = Limits.from_settings(settings)
        app.state.jobs = jobs
        app.state.tracking_uri = tracking_uri
        app.state.reconciler = Reconciler(
            app.state.sessions,
            jobs,
            interval_s=settings.reconcile_interval_s,
            cancel_grace_s=settings.cancel_grace_s,
            max_attempts=settings.max_attempts,
            max_active=settings.max_active_sweeps,
        )
        app.state.reconciler.start()
        app.state.readiness = Readiness(
            {
                "store": store_probe(engine),
                "ray": ray_probe(jobs),
                "mlflow": mlflow_probe(tracking_uri),
            },
            interval_s=settings.readiness_interval_s,
        )
        app.state.readiness.start()
        try:
            yield
        finally:
            app.state.readiness.stop()
            app.state.reconciler.stop()
            if head is not None:
                head.stop()
            engine.dispose()

    app = FastAPI(
        title="gradreg sweeps",
        version="1",
        description="Hyperparameter sweeps of Bayesian neural networks (Variational Laplace).",
        lifespan=lifespan,
    )
    problems.install(app)
    openapi.install(app)
    app.include_router(meta.router)
    app.include_router(sweeps.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


def _driver_env(settings: ServiceSettings, tracking_uri: str) -> dict[str, str]:
    """What the sweep driver job needs to find the store, MLflow and Tune's storage.

    A job's runtime_env is readable by anyone who holds the Ray token, so a store URL with a
    password never goes in it: the local head's drivers read it from an owner-only file, and
    a cluster's head must carry GRADREG_DATABASE_URL itself (docker-compose.yml sets it).
    """
    env = {
        "GRADREG_TRACKING_URI": tracking_uri,
        "GRADREG_STORAGE_PATH": settings.resolved_storage_path(),
        "GRADREG_VAR_DIR": str(settings.var_dir.absolute()),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    store = settings.resolved_database_url()
    if sa.make_url(store).password is None:
        env["GRADREG_DATABASE_URL"] = store
    elif settings.ray_jobs_url is None:
        secret = write_secret(settings.var_dir.absolute() / "secrets" / "database_url", store)
        env["GRADREG_DATABASE_URL_FILE"] = str(secret)
    return env


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, whether or not they say their length."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problems.problem(413, f"request bodies are limited to {self.max_bytes} bytes")
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
