"""A lab on one service: users and their tokens, sweeps that belong to someone, quotas and the
queue, and the audit trail. The real app under uvicorn (no Ray: the sweeps stay pending or
queued), its store on SQLite and on PostgreSQL.

Two members (alice, bob) and an admin (carol) besides the bootstrap admin, each with their own
token; every route that takes a sweep id is called as each of them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import sqlalchemy as sa

from service.__main__ import main as cli
from service.store.models import ApiToken, Base
from tests.helpers.api import LiveApi, is_problem, serve_in_process, small_sweep
from tests.helpers.store import postgres_schema


@dataclass
class Lab:
    live: LiveApi
    tokens: dict[str, str]  # user → their token
    log: list[str]  # every log line the service wrote while the module ran

    def as_user(self, user: str) -> httpx.Client:
        token = self.live.token if user == "admin" else self.tokens[user]
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.live.url, headers=headers, timeout=30)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def lab(request, tmp_path_factory) -> Iterator[Lab]:
    import logging

    captured: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(self.format(record))

    handler = Keep(logging.DEBUG)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # the service's own lines and httpx's, one per request
    root.addHandler(handler)
    settings = {"quota_active_sweeps": 2, "quota_queued_sweeps": 2}
    schema = None
    if request.param == "postgresql":
        schema = postgres_schema()
        settings["database_url"] = next(schema).render_as_string(hide_password=False)
    try:
        with serve_in_process(tmp_path_factory.mktemp("lab"), **settings) as live:
            admin = httpx.Client(
                base_url=live.url, headers={"Authorization": f"Bearer {live.token}"}, timeout=30
            )
            tokens = {}
            for name, role in [("alice", "member"), ("bob", "member"), ("carol", "admin")]:
                created = admin.post("/v1/users", json={"name": name, "role": role})
                assert created.status_code == 201, created.text
                issued = admin.post(f"/v1/users/{name}/tokens", json={})
                assert issued.status_code == 201, issued.text
                tokens[name] = issued.json()["token"]
            yield Lab(live, tokens, captured)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        if schema is not None:
            schema.close()


def submit(client: httpx.Client, name: str, **headers: str) -> httpx.Response:
    return client.post("/v1/sweeps", json=small_sweep(name), headers=headers)


# Every route that takes a sweep id, and what its owner gets for a new pending sweep.
READS = [
    ("GET", "", 200),
    ("GET", "/trials", 200),
    ("GET", "/best", 200),
    ("GET", "/spec", 200),
    ("GET", "/ensemble", 404),  # the owner's 404 says why: it has not run
]
CHANGES = [
    ("PATCH", "/budget", 200, {"max_trials": 4}),
    ("POST", "/extend", 409, {"max_trials": 5}),  # it has not ended
    ("POST", "/resume", 409, None),  # nor failed
    ("POST", "/cancel", 202, None),  # last: it ends the sweep
]


def test_another_users_sweep_is_not_found_on_every_route(lab):
    with lab.as_user("alice") as alice, lab.as_user("bob") as bob, lab.as_user("carol") as carol:
        sweep_id = submit(alice, f"isolation-{uuid.uuid4().hex[:6]}").json()["id"]
        absent = "f" * 32
        routes = (
            [(m, p) for m, p, _ in READS]
            + [(m, p) for m, p, _, _ in CHANGES]
            + [("GET", "/events")]
        )
        probed = 0
        for method, suffix in routes:
            body = None
            for change in CHANGES:
                if change[1] == suffix:
                    body = change[3]
            theirs = bob.request(method, f"/v1/sweeps/{sweep_id}{suffix}", json=body)
            nothing = bob.request(method, f"/v1/sweeps/{absent}{suffix}", json=body)
            refused = is_problem(theirs, 404)
            # The same answer as for an id that does not exist: nothing leaks.
            assert refused["detail"] == is_problem(nothing, 404)["detail"].replace(absent, sweep_id)
            probed += 1
        assert probed == len(READS) + len(CHANGES) + 1

        for method, suffix, status in READS:
            assert alice.request(method, f"/v1/sweeps/{sweep_id}{suffix}").status_code == status
            assert carol.request(method, f"/v1/sweeps/{sweep_id}{suffix}").status_code == status
        ensemble = alice.get(f"/v1/sweeps/{sweep_id}/ensemble").json()["detail"]
        assert "has no ensemble" in ensemble  # her own sweep, not a hidden one
        with alice.stream("GET", f"/v1/sweeps/{sweep_id}/events") as stream:
            assert stream.status_code == 200
        for method, suffix, status, body in CHANGES:
            # carol (an admin) acts on it as alice would
            who = carol if suffix == "/budget" else alice
            answer = who.request(method, f"/v1/sweeps/{sweep_id}{suffix}", json=body)
            assert answer.status_code == status, (suffix, answer.text)
        assert alice.get(f"/v1/sweeps/{sweep_id}").json()["status"] == "cancelled"


def test_a_member_lists_their_own_sweeps_and_an_admin_everyones(lab):
    with lab.as_user("alice") as alice, lab.as_user("bob") as bob, lab.as_user("carol") as carol:
        hers = submit(alice, "listed").json()
        assert hers["owner"] == "alice"
        alice.post(f"/v1/sweeps/{hers['id']}/cancel")
        bobs = {s["id"] for s in bob.get("/v1/sweeps", params={"limit": 500}).json()["items"]}
        assert hers["id"] not in bobs
        all_ids = {s["id"] for s in carol.get("/v1/sweeps", params={"limit": 500}).json()["items"]}
        assert hers["id"] in all_ids
        only_alice = carol.get("/v1/sweeps", params={"owner": "alice", "limit": 500}).json()
        assert {s["owner"] for s in only_alice["items"]} == {"alice"}
        refused = bob.get("/v1/sweeps", params={"owner": "alice"})
        assert "only an admin" in is_problem(refused, 403)["detail"]


def test_a_warm_start_from_another_users_sweep_is_refused_as_unknown(lab):
    with lab.as_user("alice") as alice, lab.as_user("bob") as bob:
        hers = submit(alice, "warm-source").json()["id"]
        alice.post(f"/v1/sweeps/{hers}/cancel")
        spec = small_sweep("warm-theft")
        spec["search"]["warm_start"] = {"sweeps": [hers]}
        refused = is_problem(bob.post("/v1/sweeps", json=spec), 422)
        assert refused["errors"][0]["message"] == f"no sweep {hers!r} in this service"


def test_idempotency_keys_are_each_users_own(lab):
    key = f"shared-key-{uuid.uuid4().hex[:6]}"
    with lab.as_user("alice") as alice, lab.as_user("bob") as bob:
        first = submit(alice, "keyed-a", **{"Idempotency-Key": key})
        second = submit(bob, "keyed-b", **{"Idempotency-Key": key})
        assert (first.status_code, second.status_code) == (202, 202)
        assert first.json()["id"] != second.json()["id"]
        again = submit(alice, "keyed-a", **{"Idempotency-Key": key})
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        for sweep in (first, second):
            owner = alice if sweep is first else bob
            owner.post(f"/v1/sweeps/{sweep.json()['id']}/cancel")


def test_users_tokens_and_the_audit_trail_are_an_admins(lab):
    with lab.as_user("alice") as alice, lab.as_user("carol") as carol:
        for method, path in [
            ("GET", "/v1/users"),
            ("POST", "/v1/users"),
            ("GET", "/v1/users/bob/tokens"),
            ("POST", "/v1/users/bob/tokens"),
            ("DELETE", "/v1/users/bob/tokens/x"),
            ("PATCH", "/v1/users/bob/quotas"),
            ("GET", "/v1/audit"),
        ]:
            body = {"name": "mallory"} if method == "POST" and path == "/v1/users" else {}
            refused = alice.request(method, path, json=body)
            assert "only an admin" in is_problem(refused, 403)["detail"], path
        me = alice.get("/v1/me").json()
        assert (me["name"], me["role"]) == ("alice", "member")
        assert me["quotas"] == {
            "active_sweeps": 2,
            "queued_sweeps": 2,
            "concurrent_trials": None,
            "gpus": None,
        }
        assert is_problem(carol.post("/v1/users", json={"name": "alice"}), 409)
        bad = is_problem(carol.post("/v1/users", json={"name": "Not A Name"}), 422)
        assert bad["errors"][0]["path"] == "body.name"
        assert is_problem(carol.post("/v1/users/nobody/tokens", json={}), 404)


def test_a_revoked_or_expired_token_gets_401_at_once(lab):
    with lab.as_user("carol") as carol:
        issued = carol.post("/v1/users/bob/tokens", json={}).json()
        soon = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
        expiring = carol.post("/v1/users/bob/tokens", json={"expires_at": soon}).json()
    for token in (issued, expiring):
        with httpx.Client(
            base_url=lab.live.url, headers={"Authorization": f"Bearer {token['token']}"}
        ) as as_bob:
            assert as_bob.get("/v1/me").json()["token_id"] == token["id"]
    with lab.as_user("carol") as carol:
        revoked = carol.delete(f"/v1/users/bob/tokens/{issued['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        past = is_problem(
            carol.post("/v1/users/bob/tokens", json={"expires_at": "2020-01-01T00:00:00Z"}), 422
        )
        assert "not in the future" in past["detail"]
    # The expiry passes: the store's clock is the database's row, moved back an hour.
    with lab.live.sessions() as db, db.begin():
        gone = datetime.now(timezone.utc) - timedelta(seconds=1)
        db.execute(sa.update(ApiToken).where(ApiToken.id == expiring["id"]).values(expires_at=gone))
    for token, why in ((issued, "was revoked"), (expiring, "expired at")):
        answer = httpx.get(
            lab.live.url + "/v1/me", headers={"Authorization": f"Bearer {token['token']}"}
        )
        assert why in is_problem(answer, 401)["detail"]
        assert answer.headers["www-authenticate"] == "Bearer"
    with lab.as_user("bob") as bob:  # bob's first token still works
        assert bob.get("/v1/me").status_code == 200


def test_tokens_are_never_stored_or_logged_in_the_clear(lab):
    with lab.as_user("carol") as carol:
        fresh = carol.post("/v1/users/alice/tokens", json={}).json()["token"]
        listed = carol.get("/v1/users/alice/tokens").json()
        assert listed and all("token" not in row for row in listed)
    tokens = [lab.live.token, fresh, *lab.tokens.values()]
    with lab.live.sessions() as db:
        every_row = [
            json.dumps([str(value) for value in row])
            for table in Base.metadata.sorted_tables
            for row in db.execute(sa.select(table)).all()
        ]
    assert len(every_row) > 10
    assert not [row for row in every_row if any(token in row for token in tokens)]
    assert lab.log, "the service logged nothing: the check below would be empty"
    assert not [line for line in lab.log if any(token in line for token in tokens)]


def test_a_sweep_over_the_active_quota_is_queued_and_a_full_queue_is_429(lab):
    with lab.as_user("carol") as carol:
        carol.post("/v1/users", json={"name": "dave"})
        carol.patch("/v1/users/dave/quotas", json={"active_sweeps": 1, "queued_sweeps": 1})
        token = carol.post("/v1/users/dave/tokens", json={}).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=lab.live.url, headers=headers, timeout=30) as dave:
        first = submit(dave, "first").json()
        second = submit(dave, "second").json()
        assert (first["status"], second["status"]) == ("pending", "queued")
        assert "active_sweeps quota is 1" in second["reason"]
        refused = is_problem(submit(dave, "third"), 429)
        assert (refused["quota"], refused["limit"], refused["user"]) == ("queued_sweeps", 1, "dave")
        assert "queued_sweeps quota is 1" in refused["detail"]
        cancelled = dave.post(f"/v1/sweeps/{second['id']}/cancel")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        dave.post(f"/v1/sweeps/{first['id']}/cancel")
        me = dave.get("/v1/me").json()
        assert me["own_quotas"] == {"active_sweeps": 1, "queued_sweeps": 1}


def test_the_audit_trail_records_every_change_and_pages(lab):
    with lab.as_user("alice") as alice, lab.as_user("carol") as carol:
        sweep_id = submit(alice, "audited").json()["id"]
        alice.patch(f"/v1/sweeps/{sweep_id}/budget", json={"max_trials": 5})
        alice.post(f"/v1/sweeps/{sweep_id}/cancel")
        records = carol.get("/v1/audit", params={"target": sweep_id}).json()["items"]
        assert [(r["actor"], r["action"]) for r in records] == [
            ("alice", "sweep.cancel"),
            ("alice", "sweep.budget"),
            ("alice", "sweep.create"),
        ]
        assert records[0]["client"] == "127.0.0.1"
        assert records[0]["detail"]["from"] == "pending"
        assert records[1]["detail"]["changes"] == {"max_trials": [3, 5]}
        assert records[2]["detail"]["token_id"] is not None
        user_records = carol.get("/v1/audit", params={"action": "user.create"}).json()["items"]
        assert {r["target"] for r in user_records} >= {"alice", "bob", "carol"}
        issued = carol.get("/v1/audit", params={"action": "token.issue"}).json()["items"]
        assert issued and all(set(r["detail"]) >= {"token_id"} for r in issued)
        pages, cursor = [], None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = carol.get("/v1/audit", params=params).json()
            pages.append(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        ids = [r["id"] for items in pages for r in items]
        assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids)) > 4
        text = json.dumps(pages)
        assert not any(token in text for token in [lab.live.token, *lab.tokens.values()])


def test_the_cli_manages_users_and_tokens(lab, capsys):
    base = ["--url", lab.live.url, "--token", lab.live.token]
    name = f"erin{uuid.uuid4().hex[:4]}"
    assert cli(["users", "add", name, "--gpus", "1.5", *base]) == 0
    added = json.loads(capsys.readouterr().out)
    assert (added["role"], added["quotas"]["gpus"]) == ("member", 1.5)
    assert cli(["users", "token", name, *base]) == 0
    issued = json.loads(capsys.readouterr().out)
    assert cli(["me", "--url", lab.live.url, "--token", issued["token"]]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == name
    assert cli(["users", "revoke", name, issued["id"], *base]) == 0
    assert json.loads(capsys.readouterr().out)["revoked_at"]
    assert cli(["me", "--url", lab.live.url, "--token", issued["token"]]) == 2
    assert "was revoked" in capsys.readouterr().err
    assert cli(["users", "list", *base]) == 0
    assert name in {user["name"] for user in json.loads(capsys.readouterr().out)}
    assert cli(["users", "add", name, *base]) == 2
    assert f"user '{name}' already exists" in capsys.readouterr().err
