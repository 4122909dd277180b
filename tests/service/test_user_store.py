"""Users and tokens in the store, on SQLite and PostgreSQL: what the API's auth stands on."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from service.access import ADMIN, BOOTSTRAP_ADMIN, MEMBER, Caller, token_digest
from service.quotas import Quotas
from service.store import user_queries
from service.store.models import ApiToken, utcnow

KEY = b"a-key"


def test_bootstrap_tokens_follow_the_setting(session_factory):
    with session_factory() as db:
        user_queries.sync_bootstrap_tokens(db, KEY, ["first-token", "second-token"])
        assert user_queries.authenticate(db, KEY, "first-token").name == BOOTSTRAP_ADMIN
        assert user_queries.get_user(db, BOOTSTRAP_ADMIN).role == ADMIN
        # The next start no longer lists the first: it is revoked, the second still works.
        user_queries.sync_bootstrap_tokens(db, KEY, ["second-token"])
        with pytest.raises(user_queries.Unauthenticated, match="was revoked"):
            user_queries.authenticate(db, KEY, "first-token")
        assert user_queries.authenticate(db, KEY, "second-token").role == ADMIN
        user_queries.sync_bootstrap_tokens(db, KEY, ["first-token"])  # listed again
        assert user_queries.authenticate(db, KEY, "first-token").name == BOOTSTRAP_ADMIN
        rows = db.scalars(sa.select(ApiToken.digest)).all()
        assert token_digest(KEY, "first-token") in rows and "first-token" not in rows


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
