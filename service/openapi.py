"""The OpenAPI document: the sweep spec as POST /v1/sweeps's body, errors as problem+json.

The route reads its body itself (to report every spec problem at once, with field paths), so
FastAPI cannot see the body's schema; it is added here, with the spec's parts as components.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.problems import MEDIA_TYPE
from service.schemas import Problem
from sweeps.spec import SweepSpec

COMPONENTS = "#/components/schemas/{model}"
SPEC_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": COMPONENTS.format(model="SweepSpec")}}},
}
# POST /v1/code's body: the bundle's zip bytes as they are.
CODE_BODY = {
    "required": True,
    "description": "a zip of the code directory (python -m service submit --code packs one); "
    "at most GRADREG_MAX_CODE_BYTES bytes and GRADREG_MAX_CODE_FILES files, no absolute "
    "path, `..` component, symlink or duplicate name",
    "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
}
ERRORS = {
    400: "a malformed cursor",
    401: "no bearer token, or one that is unknown, revoked or expired",
    403: "a member calling what only an admin may",
    404: "no such sweep (or another user's: it is not shown), user or token",
    409: "the sweep's status does not allow it, an idempotency key was reused, or a user "
    "name is taken",
    413: "a body over GRADREG_MAX_BODY_BYTES",
    415: "a body that is not of the media type the route takes",
    422: "the request or the sweep spec is not valid; `errors` names each field",
    429: "the caller's queued_sweeps quota is full: `quota` and `limit` name it",
    503: "the sweep store is unavailable",
}


def problem_responses(
    *statuses: int, described: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """Route `responses=` entries for these error statuses, each a problem+json body;
    ``described`` gives a route's own description of a status (ERRORS' otherwise)."""
    schema = {"$ref": COMPONENTS.format(model="Problem")}
    descriptions = {**ERRORS, **(described or {})}
    return {
        status: {"description": descriptions[status], "content": {MEDIA_TYPE: {"schema": schema}}}
        for status in sorted({*statuses, *(described or {})})
    }


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            spec = SweepSpec.model_json_schema(ref_template=COMPONENTS)
            parts = spec.pop("$defs", {})
            clashes = set(parts) & set(schemas)
            if clashes:
                raise RuntimeError(f"spec components clash with the API's: {sorted(clashes)}")
            schemas.update(parts)
            schemas["SweepSpec"] = spec
            schemas["Problem"] = Problem.model_json_schema(ref_template=COMPONENTS)
            document["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            for path, operations in document["paths"].items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
