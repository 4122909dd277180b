"""The service end to end: real uvicorn, a real Ray head and Ray Jobs, MLflow on SQLite.

One API process serves the module (its Ray head starts once); the restart test stops and
restarts that same process, and the readiness test starts a second API next to it.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from mlflow import MlflowClient

from service.launcher import free_port
from service.store.status_machine import ENDED
from sweeps.checkpoints import MIN_STATE_SAVE_PERIOD_S
from sweeps.records import LOST_TRIAL
from sweeps.tracking import OWNER_TAG
from tests.helpers.api import (
    FINAL,
    TOKENS,
    ApiProcess,
    is_problem,
    read_events,
    small_sweep,
    wait_for,
)
from tests.helpers.specs import IVON_PARAMETERS, assert_registered_model_predicts


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    process = ApiProcess(tmp_path_factory.mktemp("api")).start()
    yield process
    process.stop()


@pytest.fixture
def client(api):
    with api.client() as opened:
        yield opened


# ---------------------------------------------------------------- the HTTP surface


def test_health_readiness_and_openapi(api):
    assert httpx.get(api.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(api.url + "/readyz").json()
    assert ready.pop("age_s") < 30  # the background probe's latest round
    assert ready == {"status": "ready", "checks": ["store", "ray", "mlflow"]}
    paths = httpx.get(api.url + "/openapi.json").json()["paths"]
    assert {"/v1/sweeps", "/v1/sweeps/{sweep_id}/cancel", "/v1/schema"} <= set(paths)


def test_every_v1_route_wants_a_valid_token(api):
    paths = httpx.get(api.url + "/openapi.json").json()["paths"]
    routes = [
        (
            method.upper(),
            path.replace("{sweep_id}", "0" * 32)
            .replace("{name}", "nobody")
            .replace("{token_id}", "t"),
        )
        for path, methods in paths.items()
        if path.startswith("/v1")
        for method in methods
    ]
    assert len(routes) >= 9
    for method, path in routes:
        missing = httpx.request(method, api.url + path)
        assert is_problem(missing, 401) and missing.headers["www-authenticate"] == "Bearer"
        wrong = httpx.request(method, api.url + path, headers={"Authorization": "Bearer nope"})
        body = is_problem(wrong, 401)
        assert not any(token in json.dumps(body) for token in TOKENS)
    assert not any(token in api.log_tail(10**6) for token in TOKENS)


def test_both_configured_tokens_work(api):
    for token in TOKENS:
        with api.client(token) as client:
            assert client.get("/v1/schema").json()["title"] == "gradreg sweep specification"


def test_bad_input_gets_problem_json_naming_the_fields(client):
    spec = small_sweep("bad")
    spec["parameters"]["noise_scale"]["low"] = 0.5
    spec["method"] = "map"
    body = is_problem(client.post("/v1/sweeps", json=spec), 422)
    paths = {error["path"]: error["message"] for error in body["errors"]}
    assert "method 'map' does not use noise_scale" in paths["parameters.noise_scale"]
    assert "must be > low" in paths["parameters.noise_scale.high"]

    not_json = client.post("/v1/sweeps", content=b"{nope", headers={"content-type": "x"})
    assert "not JSON" in is_problem(not_json, 422)["errors"][0]["message"]
    huge = client.post("/v1/sweeps", content=b"[" + b"1," * 40_000 + b"1]")
    assert "limited to 65536 bytes" in is_problem(huge, 413)["detail"]
    over_cap = small_sweep("too-big", trials=5000)
    body = is_problem(client.post("/v1/sweeps", json=over_cap), 422)
    assert body["errors"][0]["path"] == "budget.max_trials"
    is_problem(client.get("/v1/sweeps/" + "f" * 32), 404)
    is_problem(client.get("/v1/sweeps", params={"cursor": "not-a-cursor"}), 400)
    is_problem(client.get("/v1/sweeps", params={"limit": 0}), 422)
    is_problem(client.post("/v1/sweeps/" + "f" * 32 + "/cancel"), 404)


def test_post_is_idempotent_with_a_key(client):
    spec = small_sweep("idempotent", trials=1)
    first = client.post("/v1/sweeps", json=spec, headers={"Idempotency-Key": "k-1"})
    again = client.post("/v1/sweeps", json=spec, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert first.headers["location"] == f"/v1/sweeps/{first.json()['id']}"
    other = copy.deepcopy(spec)
    other["budget"]["max_trials"] = 2
    clash = client.post("/v1/sweeps", json=other, headers={"Idempotency-Key": "k-1"})
    assert "k-1" in is_problem(clash, 409)["detail"]
    wait_for(client, first.json()["id"], lambda s: s["status"] in FINAL)


# ---------------------------------------------------------------- sweeps running on Ray


def test_a_sweep_runs_to_the_end_and_is_visible_in_the_api_and_mlflow(api, client):
    # Submitted by a member, whom its MLflow runs name; followed by the admin (``client``).
    # Their active-sweeps quota is 1: their second sweep waits as queued, then runs.
    member_quota = {"name": "e2e-member", "quotas": {"active_sweeps": 1}}
    assert client.post("/v1/users", json=member_quota).status_code == 201
    token = client.post("/v1/users/e2e-member/tokens", json={}).json()["token"]
    with api.client(token) as member:
        posted = member.post("/v1/sweeps", json=small_sweep("e2e-digits"))
        second = member.post("/v1/sweeps", json=small_sweep("e2e-queued", epochs=1, trials=1))
    assert posted.status_code == 202 and posted.json()["status"] == "pending"
    assert posted.json()["owner"] == "e2e-member"
    assert second.json()["status"] == "queued", second.text
    assert "active_sweeps quota is 1" in second.json()["reason"]
    sweep_id = posted.json()["id"]

    events = read_events(api, sweep_id)  # follows the sweep until it is final
    statuses = [data["status"] for kind, data in events if kind == "sweep"]
    assert statuses[-1] == "succeeded"
    assert "running" in statuses
    trial_events = [data for kind, data in events if kind == "trial"]
    assert {e["state"] for e in trial_events} >= {"running", "succeeded"}

    sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
    assert sweep["status"] == "succeeded" and sweep["counts"] == {"succeeded": 3}
    assert sweep["attempt"] == 1 and sweep["finished_at"]
    assert sweep["links"]["mlflow_parent_run"].endswith(sweep["mlflow_parent_run_id"])
    trials = client.get(f"/v1/sweeps/{sweep_id}/trials").json()["items"]
    assert len(trials) == 3 and all(t["state"] == "succeeded" for t in trials)
    assert all(t["epoch"] == 2 and t["mlflow_run_id"] for t in trials)
    for trial in trials:  # where each ran: this machine's one node, on the CPU
        placement = trial["placement"]
        assert placement["node_id"] and placement["node_ip"]
        assert placement["gpu_ids"] == [] and placement["device"] == "cpu"
    best = client.get(f"/v1/sweeps/{sweep_id}/best").json()
    assert best["pareto"] is False
    lowest = min(trials, key=lambda t: t["metrics"]["val_nll"])
    assert best["best"][0]["trial_id"] == lowest["trial_id"]
    # The sweep ensemble (default: the best 5 finished trials, here all 3).
    ensemble = client.get(sweep["links"]["ensemble"]).json()
    assert ensemble == best["ensemble"]
    assert {m["trial_id"] for m in ensemble["members"]} == {t["trial_id"] for t in trials}
    assert ensemble["selection"] == "top" and ensemble["candidates"] == 3
    assert (ensemble["size"], ensemble["requested"]) == (3, 5)  # the members it has, and why
    assert ensemble["note"].startswith("5 members asked for, but only 3 of the sweep's finished")
    assert 0 < ensemble["metrics"]["test_accuracy"] <= 1 and "test_nll_ts" in ensemble["metrics"]

    mlflow = MlflowClient(api.tracking_uri)
    runs = mlflow.search_runs([sweep["mlflow_experiment_id"]])
    children = [
        r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep["mlflow_parent_run_id"]
    ]
    assert len(children) == 3
    assert {r.info.run_id for r in children} == {t["mlflow_run_id"] for t in trials}
    assert all(r.info.status == "FINISHED" for r in children)
    parent = mlflow.get_run(sweep["mlflow_parent_run_id"])
    assert {r.data.tags[OWNER_TAG] for r in [parent, *children]} == {"e2e-member"}
    # Its fair share while it ran: the local head's CPUs, one per trial, up to its own 2; once
    # it ended, none.
    running = [data for kind, data in events if kind == "sweep" and data["status"] == "running"]
    assert 2 in {data["allowance"] for data in running}
    assert (sweep["allowance"], sweep["allowance_reason"]) == (0, ENDED)
    # The best trial's model is registered under the spec's name, and the sweep says where.
    registered = sweep["registered_model"]
    assert registered["name"] == posted.json()["name"] and registered["version"]
    version = mlflow.get_model_version(registered["name"], registered["version"])
    assert version.run_id == lowest["mlflow_run_id"]
    assert version.tags["gradreg.sweep"] == sweep_id
    assert registered["uri"] == f"models:/{registered['name']}/{registered['version']}"

    # The queued sweep started once the first ended, and ran to the end.
    queued = wait_for(client, second.json()["id"], lambda s: s["status"] in FINAL)
    assert queued["status"] == "succeeded", queued["reason"]
    assert queued["started_at"] >= sweep["finished_at"]

    listed = client.get("/v1/sweeps", params={"tag": "e2e-digits"}).json()["items"]
    assert [s["id"] for s in listed] == [sweep_id]
    done = client.get("/v1/sweeps", params={"status": "succeeded", "limit": 100}).json()
    assert sweep_id in {s["id"] for s in done["items"]}


@pytest.mark.slow
def test_an_ivon_sweep_registers_a_model_that_loads_and_predicts(api, client):
    # Issue 28: IVON is swept through the service as VL is, to a model anyone can load.
    spec = {
        **small_sweep("e2e-ivon", trials=2, concurrent=1),
        "method": "ivon",
        "parameters": IVON_PARAMETERS,
    }
    spec["fixed"] = {**spec["fixed"], "lr": 0.1}  # IVON's own step size, not Adam's
    posted = client.post("/v1/sweeps", json=spec)
    assert posted.status_code == 202, posted.text
    sweep = wait_for(client, posted.json()["id"], lambda s: s["status"] in FINAL, timeout_s=300)
    assert sweep["status"] == "succeeded" and sweep["counts"] == {"succeeded": 2}
    registered = sweep["registered_model"]
    assert registered["uri"] == f"models:/{registered['name']}/{registered['version']}"
    version = MlflowClient(api.tracking_uri).get_model_version(
        registered["name"], registered["version"]
    )
    run = MlflowClient(api.tracking_uri).get_run(version.run_id)
    assert run.data.params["method"] == "ivon"
    assert_registered_model_predicts(api.tracking_uri, registered["uri"])


def test_a_sweep_without_an_ensemble_says_why(api, client):
    spec = {**small_sweep("no-ensemble", trials=1, concurrent=1), "ensemble": {"size": 0}}
    sweep_id = client.post("/v1/sweeps", json=spec).json()["id"]
    pending = is_problem(client.get(f"/v1/sweeps/{sweep_id}/ensemble"), 404)
    assert "built when its driver finishes" in pending["detail"]
    done = wait_for(client, sweep_id, lambda s: s["status"] in FINAL, timeout_s=120)
    assert done["status"] == "succeeded"
    assert client.get(f"/v1/sweeps/{sweep_id}/best").json()["ensemble"] is None
    is_problem(client.get(f"/v1/sweeps/{sweep_id}/ensemble"), 404)


def test_cancel_stops_a_running_sweep_and_resume_finishes_it(api, client):
    spec = small_sweep("cancel-resume", epochs=40, trials=3, concurrent=1)
    sweep_id = client.post("/v1/sweeps", json=spec).json()["id"]
    wait_for(client, sweep_id, lambda s: s["counts"].get("running", 0) >= 1)

    cancelling = client.post(f"/v1/sweeps/{sweep_id}/cancel")
    assert cancelling.status_code == 202
    assert cancelling.json()["status"] in ("cancelling", "cancelled")
    cancelled = wait_for(client, sweep_id, lambda s: s["status"] in FINAL, timeout_s=120)
    assert cancelled["status"] == "cancelled"
    assert cancelled["counts"].get("succeeded", 0) < 3
    assert client.post(f"/v1/sweeps/{sweep_id}/cancel").json()["status"] == "cancelled"

    resumed = client.post(f"/v1/sweeps/{sweep_id}/resume")
    assert resumed.status_code == 202
    assert resumed.json()["status"] == "pending" and resumed.json()["attempt"] == 2
    finished = wait_for(client, sweep_id, lambda s: s["status"] in FINAL, timeout_s=300)
    assert finished["status"] == "succeeded" and finished["counts"] == {"succeeded": 3}
    is_problem(client.post(f"/v1/sweeps/{sweep_id}/resume"), 409)  # nothing to resume

    mlflow = MlflowClient(api.tracking_uri)
    runs = mlflow.search_runs([finished["mlflow_experiment_id"]])
    children = [
        r
        for r in runs
        if r.data.tags.get("gradreg.role") == "trial"
        and r.data.tags.get("mlflow.parentRunId") == finished["mlflow_parent_run_id"]
    ]
    assert len(children) == 3  # the resumed attempt reused the trials' runs
    for child in children:
        steps = [m.step for m in mlflow.get_metric_history(child.info.run_id, "epoch")]
        assert steps == list(range(1, 41))


def test_the_api_killed_mid_sweep_comes_back_and_the_sweep_finishes(api, client):
    spec = small_sweep("api-restart", epochs=30, trials=2, concurrent=1)
    sweep_id = client.post("/v1/sweeps", json=spec).json()["id"]
    wait_for(client, sweep_id, lambda s: s["counts"].get("running", 0) >= 1)
    head_before = api.head_state()

    api.stop(kill=True)  # SIGKILL: no shutdown code runs
    api.start()
    assert api.head_state() == head_before  # the new API adopted the running head

    with api.client() as fresh:
        finished = wait_for(fresh, sweep_id, lambda s: s["status"] in FINAL, timeout_s=300)
    assert finished["status"] == "succeeded"
    assert finished["attempt"] == 1  # the driver was never lost, so never restarted
    assert finished["counts"] == {"succeeded": 2}
    # Nothing lost and nothing twice: one finished MLflow run per trial, under the sweep's parent.
    runs = MlflowClient(api.tracking_uri).search_runs([finished["mlflow_experiment_id"]])
    children = [
        r for r in runs if r.data.tags.get("mlflow.parentRunId") == finished["mlflow_parent_run_id"]
    ]
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]
    assert len({r.data.tags["gradreg.trial_id"] for r in children}) == 2


def test_readyz_is_503_when_mlflow_is_down(api, tmp_path):
    dead_mlflow = f"http://127.0.0.1:{free_port()}"
    second = ApiProcess(
        tmp_path,
        extra_env={
            "GRADREG_TRACKING_URI": dead_mlflow,
            **api.head_env(),
        },
    ).start(ready=False)
    try:
        body = is_problem(httpx.get(second.url + "/readyz"), 503)
        assert f"MLflow at {dead_mlflow}: ConnectError" in body["detail"]
        assert httpx.get(second.url + "/healthz").status_code == 200
        # A flood of /readyz runs no probe and takes none of the routes' threads.
        with second.client() as client, ThreadPoolExecutor(max_workers=16) as pool:
            flood = [pool.submit(httpx.get, second.url + "/readyz") for _ in range(64)]
            started = time.monotonic()
            assert client.get("/v1/sweeps").status_code == 200
            routed = time.monotonic() - started
            answers = [f.result() for f in flood]
        assert all(a.status_code == 503 for a in answers)
        assert routed < 2.0, routed  # a probe round with MLflow down alone takes 2 s
    finally:
        second.stop()


def test_a_killed_driver_is_resubmitted_and_resumes_without_rerunning_trials(api, client):
    spec = small_sweep("driver-killed", epochs=120, trials=3, concurrent=1)
    sweep_id = client.post("/v1/sweeps", json=spec).json()["id"]
    epochs = spec["fixed"]["epochs"]

    def part_way(sweep: dict) -> bool:
        # One trial done, and the next one saved by Tune part-way through its epochs: the kill
        # must interrupt a trial that has work to lose, or it tests nothing.
        if sweep["counts"].get("succeeded", 0) < 1:
            return False
        trials = client.get(f"/v1/sweeps/{sweep_id}/trials").json()["items"]
        return any(t["state"] == "running" and 3 <= (t["epoch"] or 0) < epochs - 5 for t in trials)

    first = wait_for(client, sweep_id, part_way)
    # Work done after Tune's last save of its experiment state is done again on resume. Past
    # two save periods (and a half), the finished trial is in the saved state.
    time.sleep(2.5 * MIN_STATE_SAVE_PERIOD_S)
    running = [
        t
        for t in client.get(f"/v1/sweeps/{sweep_id}/trials").json()["items"]
        if t["state"] == "running"
    ]
    assert running and all(0 < t["epoch"] < epochs for t in running), running
    done_before = {
        t["trial_id"]: t["metrics"]
        for t in client.get(f"/v1/sweeps/{sweep_id}/trials").json()["items"]
        if t["state"] == "succeeded"
    }
    driver = subprocess.run(
        ["pgrep", "-f", f"service.worker --sweep-id {sweep_id}"], capture_output=True, text=True
    )
    pids = [int(p) for p in driver.stdout.split()]
    assert pids, "the sweep's driver process was not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # no chance to write anything

    finished = wait_for(client, sweep_id, lambda s: s["status"] in FINAL, timeout_s=300)
    assert finished["status"] == "succeeded", finished
    assert finished["attempt"] == first["attempt"] + 1
    trials = client.get(f"/v1/sweeps/{sweep_id}/trials").json()["items"]
    succeeded = [t for t in trials if t["state"] == "succeeded"]
    # A trial the driver started just before the kill, and Tune had not saved yet, is lost:
    # it is shown as interrupted with why, and a new trial ran in its place.
    lost = [t for t in trials if t["state"] != "succeeded"]
    states = "; ".join(f"{t['trial_id']} {t['state']}: {t['error']}" for t in trials)
    assert len(succeeded) == 3 and len(lost) <= 1, states
    assert all(t["state"] == "interrupted" and t["error"] == LOST_TRIAL for t in lost), states
    for trial_id, metrics in done_before.items():  # kept, not trained again
        assert next(t for t in trials if t["trial_id"] == trial_id)["metrics"] == metrics
    mlflow = MlflowClient(api.tracking_uri)
    runs = mlflow.search_runs([finished["mlflow_experiment_id"]])
    children = [
        r for r in runs if r.data.tags.get("mlflow.parentRunId") == finished["mlflow_parent_run_id"]
    ]
    statuses = sorted(r.info.status for r in children)
    assert statuses in (["FINISHED"] * 3, ["FINISHED"] * 3 + ["KILLED"]), statuses
    for child in children:
        if child.info.status != "FINISHED":
            continue
        steps = [m.step for m in mlflow.get_metric_history(child.info.run_id, "epoch")]
        assert steps == list(range(1, epochs + 1)), (child.info.run_id, steps)  # none twice


def test_the_driver_enforces_the_caps_the_api_admitted_the_sweep_under(tmp_path):
    # The head (with its drivers) is configured more strictly than the API that admits.
    strict = ApiProcess(tmp_path / "strict", extra_env={"GRADREG_MAX_EPOCHS": "1"}).start()
    try:
        lenient = ApiProcess(
            tmp_path / "lenient",
            extra_env={**strict.head_env(), "GRADREG_MAX_EPOCHS": "5"},
        ).start()
        try:
            with lenient.client() as client:
                spec = small_sweep("admitted-caps", epochs=2, trials=1, concurrent=1)
                sweep_id = client.post("/v1/sweeps", json=spec).json()["id"]
                done = wait_for(client, sweep_id, lambda s: s["status"] in FINAL, timeout_s=180)
            assert done["status"] == "succeeded", done["reason"]
        finally:
            lenient.stop()
    finally:
        strict.stop()


def test_a_file_dataset_whose_file_is_missing_is_refused_and_not_stored(client):
    spec = small_sweep("missing-file")
    spec["dataset"] = {"name": "file", "options": {"path": "nowhere/animals.csv"}}
    body = is_problem(client.post("/v1/sweeps", json=spec), 422)
    paths = {error["path"]: error["message"] for error in body["errors"]}
    assert list(paths) == ["dataset.options.path"], paths
    assert paths["dataset.options.path"].endswith("nowhere/animals.csv does not exist")
    assert client.get("/v1/sweeps", params={"tag": "missing-file"}).json()["items"] == []


def test_a_sweep_warm_started_from_an_earlier_one_shows_what_it_seeded(client):
    unknown = "0" * 32
    refused = small_sweep("warm-refused", epochs=1, trials=1, concurrent=1)
    refused["search"] = {**refused["search"], "warm_start": {"sweeps": [unknown]}}
    body = is_problem(client.post("/v1/sweeps", json=refused), 422)
    assert {e["path"]: e["message"] for e in body["errors"]} == {
        "search.warm_start.sweeps.0": f"no sweep '{unknown}' in this service"
    }

    source = small_sweep("warm-source", epochs=1, trials=2, concurrent=2)
    source_id = client.post("/v1/sweeps", json=source).json()["id"]
    done = wait_for(client, source_id, lambda s: s["status"] in FINAL, timeout_s=180)
    assert done["status"] == "succeeded" and done["warm_start"] is None
    # The same data, network and settings, searched again: both earlier trials seed it.
    warm = small_sweep("warm-started", epochs=1, trials=1, concurrent=1)
    warm["search"] = {"algorithm": "tpe", "seed": 0, "warm_start": {"sweeps": [source_id]}}
    warm_id = client.post("/v1/sweeps", json=warm).json()["id"]
    finished = wait_for(client, warm_id, lambda s: s["status"] in FINAL, timeout_s=180)
    assert finished["status"] == "succeeded", finished["reason"]
    assert finished["warm_start"] == {
        "sweeps": [source_id],
        "trials_seeded": 2,
        "trials_skipped": {},
    }
    trials = client.get(f"/v1/sweeps/{warm_id}/trials").json()["items"]
    assert len(trials) == 1  # seeded trials are not the sweep's own


def test_a_finished_sweep_extended_goes_on_with_its_trials_kept(client):
    sweep_id = client.post("/v1/sweeps", json=small_sweep("extend", epochs=1, trials=2)).json()[
        "id"
    ]
    done = wait_for(client, sweep_id, lambda s: s["status"] in FINAL, timeout_s=180)
    assert done["status"] == "succeeded"
    before = {t["trial_id"]: t for t in client.get(f"/v1/sweeps/{sweep_id}/trials").json()["items"]}
    resumed = is_problem(client.post(f"/v1/sweeps/{sweep_id}/resume"), 409)
    assert "only a sweep that is cancelled or failed can" in resumed["detail"]
    lowered = is_problem(client.post(f"/v1/sweeps/{sweep_id}/extend", json={"max_trials": 1}), 422)
    assert [e["path"] for e in lowered["errors"]] == ["budget.max_trials"]
    is_problem(client.post(f"/v1/sweeps/{sweep_id}/extend", json={"max_concurrent_trials": 4}), 422)

    extended = client.post(f"/v1/sweeps/{sweep_id}/extend", json={"max_trials": 5})
    assert extended.status_code == 202, extended.text
    assert (extended.json()["attempt"], extended.json()["reason"]) == (
        2,
        "extended: max_trials 2 → 5",
    )
    wait_for(client, sweep_id, lambda s: s["status"] == "running", timeout_s=120)
    running = is_problem(client.post(f"/v1/sweeps/{sweep_id}/extend", json={"max_trials": 6}), 409)
    assert "only a sweep that is cancelled or failed or succeeded can" in running["detail"]

    finished = wait_for(client, sweep_id, lambda s: s["status"] in FINAL, timeout_s=240)
    assert (finished["status"], finished["attempt"]) == ("succeeded", 2), finished["reason"]
    trials = client.get(f"/v1/sweeps/{sweep_id}/trials").json()["items"]
    assert len(trials) == 5 and {t["state"] for t in trials} == {"succeeded"}
    after = {t["trial_id"]: t for t in trials}
    for trial_id, trial in before.items():  # kept as they were
        assert after[trial_id]["metrics"] == trial["metrics"]
        assert after[trial_id]["mlflow_run_id"] == trial["mlflow_run_id"]
    assert client.get(f"/v1/sweeps/{sweep_id}/spec").json()["spec"]["budget"]["max_trials"] == 5


def test_a_running_sweeps_budget_changes_and_its_driver_takes_it(api, client):
    # Trials long enough (10 epochs) that the change lands before the first one ends.
    spec = small_sweep("patched", epochs=10, trials=2, concurrent=2)
    sweep_id = client.post("/v1/sweeps", json=spec).json()["id"]
    is_problem(client.patch(f"/v1/sweeps/{sweep_id}/budget", json={}), 422)
    over = client.patch(f"/v1/sweeps/{sweep_id}/budget", json={"max_concurrent_trials": 10_000})
    assert [e["path"] for e in is_problem(over, 422)["errors"]] == ["budget.max_concurrent_trials"]

    def both_running(sweep: dict) -> bool:
        return sweep["counts"].get("running", 0) == 2 or sweep["status"] in FINAL

    assert wait_for(client, sweep_id, both_running, timeout_s=120)["status"] == "running"
    changed = client.patch(
        f"/v1/sweeps/{sweep_id}/budget", json={"max_concurrent_trials": 1, "max_trials": 4}
    )
    assert changed.status_code == 200, changed.text
    [change] = changed.json()["budget_changes"]
    assert change["kind"] == "change"
    assert change["changes"] == {"max_trials": [2, 4], "max_concurrent_trials": [2, 1]}

    done = wait_for(client, sweep_id, lambda s: s["status"] in FINAL, timeout_s=240)
    assert done["status"] == "succeeded", done["reason"]
    trials = client.get(f"/v1/sweeps/{sweep_id}/trials").json()["items"]
    assert len(trials) == 4  # the raised budget was reached
    mlflow = MlflowClient(api.tracking_uri)
    runs = sorted(
        (mlflow.get_run(t["mlflow_run_id"]).info for t in trials), key=lambda r: r.start_time
    )
    # The two that ran at once, then one at a time: each later one started after the one before
    # it (and both first ones) ended.
    assert runs[1].start_time < runs[0].end_time
    assert runs[2].start_time >= max(runs[0].end_time, runs[1].end_time)
    assert runs[3].start_time >= runs[2].end_time
    ended = client.patch(f"/v1/sweeps/{sweep_id}/budget", json={"max_trials": 8})
    assert "extend it" in is_problem(ended, 409)["detail"]
