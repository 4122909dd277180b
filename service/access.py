"""Who may do what: the roles, the caller a request is made by, and how tokens are kept.

One home for the access rules the routes, the store's queries and the CLI share:

- a ``member`` sees and acts on their own sweeps only; an ``admin`` on every sweep, and on users,
  tokens and the audit trail;
- another user's sweep is *not found* for a member (404 on every route, so its existence does not
  leak), never *forbidden*;
- a token is a long random string shown once; the store keeps only its keyed SHA-256 digest
  (HMAC with the service's token key), so neither a copy of the store nor its logs can be used to
  call the API.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

ADMIN = "admin"
MEMBER = "member"
ROLES: tuple[str, ...] = (ADMIN, MEMBER)
# The user that GRADREG_API_TOKENS' tokens belong to, and that owns every sweep stored before
# sweeps had owners (migration 0008).
BOOTSTRAP_ADMIN = "admin"
USER_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
USER_NAME_RULE = "1 to 64 characters: a lower-case letter, then lower-case letters, digits, _ . -"
# An issued token: its prefix says what it is (and lets secret scanners find one pasted
# somewhere), 32 random bytes make it unguessable.
TOKEN_PREFIX = "grt_"
TOKEN_ID_BYTES = 6


@dataclass(frozen=True)
class Caller:
    """Who made a request: a user, their role, and the token they used (None for a bootstrap
    token, which GRADREG_API_TOKENS holds, not the store)."""

    name: str
    role: str
    token_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def may_see(self, owner: str) -> bool:
        """Whether a sweep owned by ``owner`` exists, as far as this caller is concerned."""
        return self.is_admin or owner == self.name

    @property
    def owner_filter(self) -> str | None:
        """The owner whose sweeps a listing is limited to: the caller's own, unless an admin."""
        return None if self.is_admin else self.name


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_token_id() -> str:
    return secrets.token_hex(TOKEN_ID_BYTES)


def token_digest(key: bytes, token: str) -> str:
    """The keyed SHA-256 of a token, as the store keeps it (hex). A token is 32 random bytes, so
    no slow password hash is needed: what the key adds is that a stolen store alone cannot be
    used to check guesses."""
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def check_user_name(name: str) -> str:
    if not USER_NAME.match(name):
        raise ValueError(f"user name {name!r} is not valid: {USER_NAME_RULE}")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role
