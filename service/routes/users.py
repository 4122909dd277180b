"""/v1/me, /v1/users and their tokens; /v1/audit. Users, tokens and the audit trail are an
admin's; /v1/me is everyone's."""

from __future__ import annotations

from datetime import timezone
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from service.auth import AdminDep, CallerDep, client_address, current_caller
from service.deps import SessionsDep, SettingsDep
from service.openapi import problem_responses
from service.quotas import Quotas
from service.schemas import (
    AuditOut,
    AuditPage,
    IssuedTokenOut,
    MeOut,
    QuotasIn,
    QuotasOut,
    TokenIn,
    TokenOut,
    UserIn,
    UserOut,
)
from service.store import audit, paging, user_queries
from service.store.models import ApiToken, User

router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(current_caller)],
    responses=problem_responses(401, 422, 503),
)
ADMIN_ONLY = problem_responses(403)


def user_out(user: User, defaults: Quotas) -> UserOut:
    quotas = user_queries.quotas_of(user, defaults)
    return UserOut(
        name=user.name,
        role=user.role,
        created_at=user.created_at,
        quotas=QuotasOut(**quotas.to_dict()),
        own_quotas=dict(user.quotas),
    )


def token_out(token: ApiToken) -> TokenOut:
    return TokenOut(
        id=token.id,
        user=token.user_name,
        created_at=token.created_at,
        last_used_at=token.last_used_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
    )


@router.get("/me", response_model=MeOut, tags=["users"])
def me(sessions: SessionsDep, settings: SettingsDep, caller: CallerDep) -> MeOut:
    """Who the token is: the user, their role, their quotas in force, and the token's id."""
    with sessions() as db:
        user = user_queries.get_user(db, caller.name)
        out = user_out(user, settings.quotas())
    return MeOut(**out.model_dump(), token_id=caller.token_id)


@router.get("/users", response_model=list[UserOut], tags=["users"], responses=ADMIN_ONLY)
def list_users(sessions: SessionsDep, settings: SettingsDep, caller: AdminDep) -> list[UserOut]:
    with sessions() as db:
        return [user_out(user, settings.quotas()) for user in user_queries.list_users(db)]


@router.post(
    "/users",
    status_code=201,
    response_model=UserOut,
    tags=["users"],
    responses=problem_responses(403, 409),
)
def create_user(
    request: Request, sessions: SessionsDep, settings: SettingsDep, caller: AdminDep, body: UserIn
) -> UserOut:
    """A new user (409 if the name is taken); issue them a token with POST .../tokens."""
    given = {} if body.quotas is None else body.quotas.model_dump(exclude_unset=True)
    try:
        quotas = user_queries.own_quotas(given, settings.quotas())
    except ValueError as error:
        raise HTTPException(422, str(error)) from None
    with sessions() as db:
        user = user_queries.create_user(db, body.name, str(body.role), quotas)
        detail = {"role": user.role, "quotas": quotas}
        audit.record(db, caller, "user.create", user.name, client_address(request), detail)
        return user_out(user, settings.quotas())


@router.patch(
    "/users/{name}/quotas",
    response_model=UserOut,
    tags=["users"],
    responses=problem_responses(403, 404),
)
def set_quotas(
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    caller: AdminDep,
    name: str,
    body: QuotasIn,
) -> UserOut:
    """Set quotas of this user's own; a null removes one (the default applies again). The
    reconciler applies them from its next pass: a lowered quota stops no running trial or
    sweep, it starts fewer."""
    given = body.model_dump(exclude_unset=True)
    with sessions() as db:
        try:
            user = user_queries.set_quotas(db, name, given, settings.quotas())
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        audit.record(db, caller, "user.quotas", name, client_address(request), {"set": given})
        return user_out(user, settings.quotas())


@router.get(
    "/users/{name}/tokens",
    response_model=list[TokenOut],
    tags=["users"],
    responses=problem_responses(403, 404),
)
def list_tokens(sessions: SessionsDep, caller: AdminDep, name: str) -> list[TokenOut]:
    """The user's tokens, revoked ones included; never the tokens themselves."""
    with sessions() as db:
        return [token_out(token) for token in user_queries.list_tokens(db, name)]


@router.post(
    "/users/{name}/tokens",
    status_code=201,
    response_model=IssuedTokenOut,
    tags=["users"],
    responses=problem_responses(403, 404),
)
def issue_token(
    request: Request,
    sessions: SessionsDep,
    caller: AdminDep,
    name: str,
    body: TokenIn | None = None,
) -> IssuedTokenOut:
    """A new token for the user, shown in this answer only: the store keeps its digest."""
    expires_at = body.expires_at if body is not None else None
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=timezone.utc)
    with sessions() as db:
        try:
            row, token = user_queries.issue_token(db, request.app.state.token_key, name, expires_at)
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        detail = {"token_id": row.id, "expires_at": expires_at and expires_at.isoformat()}
        audit.record(db, caller, "token.issue", name, client_address(request), detail)
        return IssuedTokenOut(**token_out(row).model_dump(), token=token)


@router.delete(
    "/users/{name}/tokens/{token_id}",
    response_model=TokenOut,
    tags=["users"],
    responses=problem_responses(403, 404),
)
def revoke_token(
    request: Request, sessions: SessionsDep, caller: AdminDep, name: str, token_id: str
) -> TokenOut:
    """Revoke the token: from now on it gets 401."""
    with sessions() as db:
        row = user_queries.revoke_token(db, name, token_id)
        detail = {"token_id": token_id}
        audit.record(db, caller, "token.revoke", name, client_address(request), detail)
        return token_out(row)


@router.get(
    "/audit", response_model=AuditPage, tags=["audit"], responses=problem_responses(400, 403)
)
def audit_trail(
    sessions: SessionsDep,
    caller: AdminDep,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    target: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=paging.MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> AuditPage:
    """The state-changing calls, newest first, a page at a time (``next_cursor``)."""
    with sessions() as db:
        rows, next_cursor = audit.page(
            db, limit=limit, cursor=cursor, actor=actor, action=action, target=target
        )
        items = [AuditOut.model_validate(row, from_attributes=True) for row in rows]
    return AuditPage(items=items, next_cursor=next_cursor)
