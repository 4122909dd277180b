"""Users and tokens in the store, on SQLite and PostgreSQL: what the API's auth stands on."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service.access import ADMIN, BOOTSTRAP_ADMIN, MEMBER, Caller
from service.quotas import Quotas
from service.store import user_queries
from service.store.models import ApiToken, utcnow
from tests.helpers.api import routes_app

KEY = b"a-key"


def test_bootstrap_tokens_are_the_settings_and_never_stored(session_factory):
    """Two API processes on one store, each configured with its own GRADREG_API_TOKENS: each
    accepts its own (a token taken out of the setting stops working at the restart)."""
    first = TestClient(routes_app(session_factory, "first-token"))
    second = TestClient(routes_app(session_factory, "second-token"))
    me = first.get("/v1/me", headers={"Authorization": "Bearer first-token"}).json()
    assert (me["name"], me["role"]) == (BOOTSTRAP_ADMIN, ADMIN)
    assert me["token_id"].startswith("env-")
    refused = second.get("/v1/me", headers={"Authorization": "Bearer first-token"})
    assert refused.status_code == 401
    assert second.get("/v1/me", headers={"Authorization": "Bearer second-token"}).is_success
    with session_factory() as db:
        assert db.scalars(sa.select(ApiToken)).all() == []


def test_a_token_under_another_key_is_not_accepted(session_factory):
    with session_factory() as db:
        user_queries.create_user(db, "alice", MEMBER)
        _, token = user_queries.issue_token(db, KEY, "alice")
        assert user_queries.authenticate(db, KEY, token) == Caller(
            "alice", MEMBER, user_queries.list_tokens(db, "alice")[0].id
        )
        with pytest.raises(user_queries.Unauthenticated, match="not accepted"):
            user_queries.authenticate(db, b"another-key", token)


def test_last_use_is_written_at_most_once_a_minute(session_factory):
    with session_factory() as db:
        user_queries.create_user(db, "alice", MEMBER)
        row, token = user_queries.issue_token(db, KEY, "alice")
        user_queries.authenticate(db, KEY, token)
        first = user_queries.list_tokens(db, "alice")[0].last_used_at
        assert first is not None
        user_queries.authenticate(db, KEY, token)
        assert user_queries.list_tokens(db, "alice")[0].last_used_at == first
        earlier = utcnow() - user_queries.LAST_USED_RESOLUTION - timedelta(seconds=1)
        db.execute(sa.update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=earlier))
        db.commit()
        user_queries.authenticate(db, KEY, token)
        assert user_queries.list_tokens(db, "alice")[0].last_used_at > first


def test_bad_names_roles_and_quotas_are_refused_naming_them(session_factory):
    defaults = Quotas(active_sweeps=2, queued_sweeps=3)
    with session_factory() as db:
        with pytest.raises(ValueError, match="user name 'Bob' is not valid"):
            user_queries.create_user(db, "Bob", MEMBER)
        with pytest.raises(ValueError, match="role 'owner' is not one of admin, member"):
            user_queries.create_user(db, "bob", "owner")
        user_queries.create_user(db, "bob", MEMBER)
        with pytest.raises(user_queries.UserExists):
            user_queries.create_user(db, "bob", ADMIN)
        with pytest.raises(ValueError, match="unknown quota cpus"):
            user_queries.set_quotas(db, "bob", {"cpus": 1}, defaults)
        with pytest.raises(ValueError, match="quota active_sweeps must be at least 1"):
            user_queries.set_quotas(db, "bob", {"active_sweeps": 0}, defaults)
        with pytest.raises(ValueError, match="quota concurrent_trials must be a whole number"):
            user_queries.set_quotas(db, "bob", {"concurrent_trials": 1.5}, defaults)
        bob = user_queries.set_quotas(db, "bob", {"gpus": 0.5}, defaults)
        assert user_queries.quotas_of(bob, defaults) == Quotas(2, 3, None, 0.5)
        bob = user_queries.set_quotas(db, "bob", {"gpus": None}, defaults)  # back to default
        assert bob.quotas == {}
        with pytest.raises(user_queries.UserNotFound):
            user_queries.set_quotas(db, "nobody", {}, defaults)
        with pytest.raises(user_queries.TokenNotFound):
            user_queries.revoke_token(db, "bob", "no-such-token")
