"""Health, readiness and the spec's JSON Schema."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import httpx
import sqlalchemy as sa
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from service.auth import require_token
from service.deps import EngineDep, JobsDep, TrackingUriDep
from service.openapi import problem_responses
from service.problems import problem
from sweeps.spec import SweepSpec

router = APIRouter()
PROBE_TIMEOUT_S = 2.0


@router.get("/healthz", tags=["meta"])
def healthz() -> dict[str, str]:
    """The process is up (it says nothing about what it depends on: see /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["meta"], responses=problem_responses(503))
def readyz(engine: EngineDep, jobs: JobsDep, tracking_uri: TrackingUriDep) -> JSONResponse:
    """Store, Ray and MLflow reachable: 200; otherwise 503 naming what is not."""
    problems = [
        reason
        for reason in (
            _store_problem(engine),
            jobs.reachable(),
            mlflow_problem(tracking_uri),
        )
        if reason
    ]
    if problems:
        return problem(503, "; ".join(problems), checks=problems)
    return JSONResponse({"status": "ready", "checks": ["store", "ray", "mlflow"]})


@router.get(
    "/v1/schema",
    tags=["meta"],
    dependencies=[Depends(require_token)],
    responses=problem_responses(401, 403),
)
def schema() -> dict:
    """The JSON Schema of a sweep spec (what POST /v1/sweeps accepts)."""
    return SweepSpec.model_json_schema()


def _store_problem(engine: sa.Engine) -> str | None:
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except Exception as error:
        return f"store: {type(error).__name__}"
    return None


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
