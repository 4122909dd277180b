"""Health, readiness and the spec's JSON Schema."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from service.auth import current_caller
from service.deps import ReadinessDep
from service.openapi import problem_responses
from service.problems import problem
from sweeps.spec import SweepSpec

router = APIRouter()


@router.get("/healthz", tags=["meta"])
def healthz() -> dict[str, str]:
    """The process is up (it says nothing about what it depends on: see /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["meta"], responses=problem_responses(503))
async def readyz(readiness: ReadinessDep) -> JSONResponse:
    """Store, Ray and MLflow reachable: 200; otherwise 503 naming what is not. The probes run
    in the background every few seconds; this reads their latest results (``age_s`` old)."""
    snapshot = readiness.latest()
    age = round(snapshot.age_s(), 1)
    if not snapshot.ready:
        problems = list(snapshot.problems.values())
        return problem(503, "; ".join(problems), checks=problems, age_s=age)
    return JSONResponse({"status": "ready", "checks": list(snapshot.checked), "age_s": age})


@router.get(
    "/v1/schema",
    tags=["meta"],
    dependencies=[Depends(current_caller)],
    responses=problem_responses(401),
)
def schema() -> dict:
    """The JSON Schema of a sweep spec (what POST /v1/sweeps accepts)."""
    return SweepSpec.model_json_schema()
