"""Bearer tokens on every /v1 route: 401 without one, 403 for a wrong one."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from service.deps import SettingsDep


def require_token(request: Request, settings: SettingsDep) -> None:
    tokens: tuple[str, ...] = settings.tokens
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise HTTPException(
            401, "send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"}
        )
    # Compare with every configured token, without stopping early, in constant time each.
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given.strip().encode(), token.encode())
    if not matched:
        raise HTTPException(403, "that token is not accepted here")
