"""Users and their tokens: created, listed, issued, revoked, and a request's token looked up.

An issued token is stored as its keyed digest only (`service.access.token_digest`). The tokens
of GRADREG_API_TOKENS are the bootstrap admin's and are never stored (`bootstrap_tokens`).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.access import (
    ADMIN,
    BOOTSTRAP_ADMIN,
    Caller,
    check_role,
    check_user_name,
    new_token,
    new_token_id,
    token_digest,
)
from service.quotas import Quotas
from service.store.models import ApiToken, User, utcnow
from service.store.transactions import writing

BOOTSTRAP_TOKEN_PREFIX = "env-"
# last_used_at is written at most this often per token: a read must not be a write each time.
LAST_USED_RESOLUTION = timedelta(seconds=60)


class UserNotFound(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no user {name!r}")


class UserExists(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"user {name!r} already exists")


class TokenNotFound(LookupError):
    def __init__(self, user: str, token_id: str) -> None:
        super().__init__(f"user {user!r} has no token {token_id!r}")


class Unauthenticated(Exception):
    """A token that is not (or no longer) accepted; its message says which, never the token."""


def create_user(
    session: Session, name: str, role: str, quotas: Mapping[str, Any] | None = None
) -> User:
    check_user_name(name)
    check_role(role)
    with writing(session):
        if session.get(User, name) is not None:
            raise UserExists(name)
        user = User(name=name, role=role, quotas=dict(quotas or {}))
        session.add(user)
        try:
            session.flush()
        except IntegrityError:
            raise UserExists(name) from None
    return user


def get_user(session: Session, name: str) -> User:
    user = session.get(User, name, populate_existing=True)
    if user is None:
        raise UserNotFound(name)
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(sa.select(User).order_by(User.name)))


def own_quotas(quotas: Mapping[str, Any], defaults: Quotas) -> dict[str, Any]:
    """A user's own quotas as the store keeps them: the ones given (a None is none), checked
    over ``defaults`` (ValueError naming an unknown or bad one)."""
    own = {key: value for key, value in quotas.items() if value is not None}
    defaults.overridden(own)
    return own


def set_quotas(session: Session, name: str, quotas: Mapping[str, Any], defaults: Quotas) -> User:
    """Put ``quotas`` over the user's own (a None removes one: the default applies again)."""
    with writing(session):
        user = get_user(session, name)
        user.quotas = own_quotas({**user.quotas, **quotas}, defaults)
    return user


def quotas_of(user: User, defaults: Quotas) -> Quotas:
    return defaults.overridden(user.quotas)


def issue_token(
    session: Session, key: bytes, user_name: str, expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """A new token for the user: its row, and the token itself (shown once, never stored)."""
    if expires_at is not None and expires_at <= utcnow():
        raise ValueError(f"expires_at {expires_at.isoformat()} is not in the future")
    token = new_token()
    with writing(session):
        get_user(session, user_name)
        row = ApiToken(
            id=new_token_id(),
            user_name=user_name,
            digest=token_digest(key, token),
            expires_at=expires_at,
        )
        session.add(row)
    return row, token


def list_tokens(session: Session, user_name: str) -> list[ApiToken]:
    get_user(session, user_name)
    query = sa.select(ApiToken).where(ApiToken.user_name == user_name)
    query = query.order_by(ApiToken.created_at, ApiToken.id)
    return list(session.scalars(query.execution_options(populate_existing=True)))


def revoke_token(session: Session, user_name: str, token_id: str) -> ApiToken:
    """Revoke the token now (a second revoke keeps the first time)."""
    with writing(session):
        row = session.get(ApiToken, token_id, populate_existing=True)
        if row is None or row.user_name != user_name:
            raise TokenNotFound(user_name, token_id)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
    return row


def authenticate(session: Session, key: bytes, token: str) -> Caller:
    """The caller an issued token stands for; `Unauthenticated` if it is unknown, revoked or
    expired.

    The lookup is by the token's keyed digest, which a caller cannot aim at: how long it takes
    says nothing about stored tokens. The digest found is compared again in constant time.
    """
    digest = token_digest(key, token)
    row = session.execute(
        sa.select(ApiToken, User.role)
        .join(User, User.name == ApiToken.user_name)
        .where(ApiToken.digest == digest)
    ).one_or_none()
    if row is None or not hmac.compare_digest(row[0].digest, digest):
        raise Unauthenticated("that token is not accepted here")
    found, role = row
    now = utcnow()
    if found.revoked_at is not None:
        raise Unauthenticated(f"token {found.id} was revoked")
    if found.expires_at is not None and found.expires_at <= now:
        raise Unauthenticated(f"token {found.id} expired at {found.expires_at.isoformat()}")
    if found.last_used_at is None or now - found.last_used_at >= LAST_USED_RESOLUTION:
        with writing(session):
            session.execute(
                sa.update(ApiToken).where(ApiToken.id == found.id).values(last_used_at=now)
            )
    return Caller(found.user_name, role, found.id)


def ensure_bootstrap_admin(session: Session) -> None:
    """The user GRADREG_API_TOKENS' tokens stand for exists, an admin (migration 0008 made it;
    a store made since by `Base.metadata.create_all` may lack it)."""
    with writing(session):
        if session.get(User, BOOTSTRAP_ADMIN) is None:
            session.add(User(name=BOOTSTRAP_ADMIN, role=ADMIN, quotas={}))


def bootstrap_tokens(key: bytes, tokens: Iterable[str]) -> dict[str, str]:
    """GRADREG_API_TOKENS' tokens as the API checks them: their digests, each with the id a
    caller's record names it by (``env-`` and the digest's start). They live in the setting,
    not the store: each API process accepts the ones it is configured with, and a token taken
    out of the setting stops working when the process restarts."""
    digests = [token_digest(key, token) for token in tokens]
    return {digest: BOOTSTRAP_TOKEN_PREFIX + digest[:12] for digest in digests}


def bootstrap_caller(known: Mapping[str, str], digest: str) -> Caller | None:
    """The bootstrap admin, if ``digest`` is one of ``known``'s (compared with every one, in
    constant time each)."""
    found = None
    for candidate, token_id in known.items():
        if hmac.compare_digest(candidate, digest):
            found = token_id
    return None if found is None else Caller(BOOTSTRAP_ADMIN, ADMIN, found)
