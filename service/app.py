"""The FastAPI application: settings, store, Ray Jobs and the reconciler wired together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio.to_thread
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import openapi, problems
from service.code_store import CodeStore
from service.launcher import LocalRayHead, RayJobs
from service.readiness import Readiness, mlflow_probe, ray_probe, store_probe
from service.reconciler import Reconciler
from service.redaction import redact_tokens_in_logs
from service.routes import code, meta, sweeps, users
from service.settings import SECRET_VARIABLES, ServiceSettings, absolute_url, write_secret
from service.store import user_queries
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
        code_store = CodeStore(settings.resolved_code_store(), settings.var_dir / "code-cache")
        jobs = RayJobs(jobs_url, settings.python, _driver_env(settings, tracking_uri), code_store)
        app.state.engine = engine
        attach_store(app, settings, session_factory(engine))
        app.state.limits = Limits.from_settings(settings)
        app.state.jobs = jobs
        app.state.code_store = code_store
        app.state.tracking_uri = tracking_uri
        app.state.reconciler = Reconciler(
            app.state.sessions,
            jobs,
            interval_s=settings.reconcile_interval_s,
            cancel_grace_s=settings.cancel_grace_s,
            max_attempts=settings.max_attempts,
            max_active=settings.max_active_sweeps,
            quotas=settings.quotas(),
            capacity=jobs.cluster_resources,
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
    app.include_router(code.router)
    app.include_router(users.router)
    # A code bundle is megabytes, a spec kilobytes: the bundle's route has a cap of its own.
    code_cap = BodyCap(settings.max_code_bytes, "code bundles", "GRADREG_MAX_CODE_BYTES")
    app.add_middleware(BodyLimit, cap=BodyCap(settings.max_body_bytes), paths={code.PATH: code_cap})
    return app


def attach_store(
    app: FastAPI,
    settings: ServiceSettings,
    sessions: sessionmaker[Session],
    token_key: bytes | None = None,
) -> None:
    """Put on ``app.state`` what the routes read to know the caller and reach the store: the
    settings, the sessions, the token key (default: the settings') and the bootstrap admin's
    tokens, whom the store then holds."""
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.token_key = token_key or settings.resolved_token_key()
    app.state.bootstrap_tokens = user_queries.bootstrap_tokens(app.state.token_key, settings.tokens)
    with sessions() as db:
        user_queries.ensure_bootstrap_admin(db)


def _driver_env(settings: ServiceSettings, tracking_uri: str) -> dict[str, str]:
    """What the sweep driver job needs to find the store, MLflow and Tune's storage.

    A job's runtime_env is readable by anyone who holds the Ray token, so a store URL with a
    password never goes in it: the local head's drivers read it from an owner-only file, and
    a cluster's head must carry GRADREG_DATABASE_URL itself (docker-compose.yml sets it).
    """
    env = {
        # A SQLite file's path absolute: with a code bundle, the driver's working directory is
        # the bundle's.
        "GRADREG_TRACKING_URI": absolute_url(tracking_uri),
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


@dataclass(frozen=True)
class BodyCap:
    """The most bytes a request body may hold, what such a body is, and the setting to raise."""

    max_bytes: int
    what: str = "request bodies"
    setting: str = "GRADREG_MAX_BODY_BYTES"

    def refusal(self) -> str:
        return f"{self.what} are limited to {self.max_bytes} bytes ({self.setting})"


class BodyLimit:
    """Refuse request bodies over their cap with 413, whether or not they say their length:
    ``cap`` for every route but those ``paths`` gives a cap of their own (a code bundle's)."""

    def __init__(
        self, app: ASGIApp, cap: BodyCap, paths: Mapping[str, BodyCap] | None = None
    ) -> None:
        self.app = app
        self.cap = cap
        self.paths = dict(paths or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.paths.get(scope["path"], self.cap)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap.max_bytes:
            await self._refuse(cap, scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(cap, scope, receive, send)

    async def _refuse(self, cap: BodyCap, scope: Scope, receive: Receive, send: Send) -> None:
        response = problems.problem(413, cap.refusal())
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
