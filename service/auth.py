"""Who is calling: the bearer token on every /v1 route, one of GRADREG_API_TOKENS (the bootstrap
admin's, checked in memory) or one issued to a user (looked up in the store).

401 without a token, or with one that is unknown, revoked or expired; 403 when a member calls
what only an admin may (`require_admin`). The access rules themselves are `service.access`'s.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.access import Caller, token_digest
from service.deps import SessionsDep
from service.store import user_queries

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def current_caller(request: Request, sessions: SessionsDep) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    token = given.strip()
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "send Authorization: Bearer <token>", headers=CHALLENGE)
    key = request.app.state.token_key
    bootstrap = user_queries.bootstrap_caller(
        request.app.state.bootstrap_tokens, token_digest(key, token)
    )
    if bootstrap is not None:
        return bootstrap
    with sessions() as db:
        try:
            return user_queries.authenticate(db, key, token)
        except user_queries.Unauthenticated as error:
            raise HTTPException(401, str(error), headers=CHALLENGE) from None


CallerDep = Annotated[Caller, Depends(current_caller)]


def require_admin(caller: CallerDep) -> Caller:
    if not caller.is_admin:
        raise HTTPException(403, f"user {caller.name} is a member; only an admin can do this")
    return caller


AdminDep = Annotated[Caller, Depends(require_admin)]


def client_address(request: Request) -> str | None:
    """Where a call came from, as the audit trail records it."""
    return request.client.host if request.client else None
