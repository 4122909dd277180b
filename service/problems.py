"""RFC 9457 problem+json for every error the API returns; never a bare 500 for a caller's fault."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException

from service.quotas import QuotaExceeded
from service.store.paging import InvalidCursor
from service.store.status_machine import InvalidBudgetChange, InvalidTransition
from service.store.sweep_queries import IdempotencyConflict
from service.store.transactions import SweepNotFound
from service.store.user_queries import TokenNotFound, UserExists, UserNotFound
from sweeps import SpecError
from sweeps.code import BundleError

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"
# The store's errors that are the caller's, and the status each answers with (its message the
# detail).
CALLER_ERRORS: dict[type[Exception], int] = {
    SweepNotFound: 404,
    InvalidTransition: 409,
    InvalidBudgetChange: 409,
    IdempotencyConflict: 409,
    InvalidCursor: 400,
    UserNotFound: 404,
    TokenNotFound: 404,
    UserExists: 409,
}


def problem(
    status: int,
    detail: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase}
    body["status"] = status
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def store_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the store cannot be reached (try again), not that a query is
    wrong: lost or refused connections, interface failures, pool and statement timeouts."""
    # psycopg's QueryCanceled (statement_timeout) is an OperationalError too.
    return isinstance(error, OperationalError | InterfaceError | SQLAlchemyTimeoutError)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e["loc"]), "path": ".".join(map(str, e["loc"])), "message": e["msg"]}
            for e in error.errors()
        ]
        return problem(422, "the request is not valid", errors=errors)

    @app.exception_handler(BundleError)
    async def _refused_bundle(request: Request, error: BundleError) -> JSONResponse:
        # The offending entry is where the problem is; a bundle that is not a zip at all has
        # none (the body).
        where = error.entry if error.entry is not None else "body"
        errors = [
            {"loc": ["body", where], "path": where, "entry": error.entry, "message": str(error)}
        ]
        return problem(422, "the code bundle is refused", errors=errors)

    @app.exception_handler(SpecError)
    async def _invalid_spec(request: Request, error: SpecError) -> JSONResponse:
        errors = [issue.to_dict() for issue in error.issues]
        return problem(422, f"the sweep spec has {len(errors)} problem(s)", errors=errors)

    async def _callers_error(request: Request, error: Exception) -> JSONResponse:
        status = next(code for kind, code in CALLER_ERRORS.items() if isinstance(error, kind))
        return problem(status, str(error))

    for error_type in CALLER_ERRORS:
        app.add_exception_handler(error_type, _callers_error)

    @app.exception_handler(QuotaExceeded)
    async def _over_quota(request: Request, error: QuotaExceeded) -> JSONResponse:
        return problem(429, str(error), quota=error.quota, limit=error.limit, user=error.user)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> JSONResponse:
        return problem(error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(SQLAlchemyTimeoutError)
    async def _store_error(request: Request, error: Exception) -> JSONResponse:
        if not store_unavailable(error):  # an integrity or programming error is a bug: 500
            return await _unexpected(request, error)
        log.error("store unavailable: %s", type(error).__name__)
        return problem(503, "the sweep store is unavailable; try again shortly")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal error; it has been logged")
