"""The deployment run end to end and broken on purpose: sweeps through the API on the local
cluster (a Ray head and two one-GPU workers at addresses of their own, Tune's state in an S3
bucket, MLflow's server on PostgreSQL serving artifacts from the bucket).

The tests run in this order and share the cluster: each leaves it whole again.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import boto3
import httpx
import optuna
import psycopg
import pytest
from mlflow import MlflowClient
from ray.tune.trainable.metadata import _TrainingRunMetadata

from localcluster.harness import MLFLOW_URL, NODES, WORKERS, Cluster
from localcluster.sample import digits_sweep as sweep_spec
from sweeps.study import LOST_ATTR, beside_store
from sweeps.tracking import ATTEMPT_TAG, DIAGRAM_FILE, RESUMED_TAG
from tests.helpers.cluster import finished, submit, sweep, trials, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

WORKER_IPS = {NODES[name].address: name for name in WORKERS}


def figure(fault: str, **values: object) -> None:
    """One line of RELIABILITY.md's cluster table (`pytest -s tests/cluster` prints them)."""
    print(f"\ncluster figure: {fault}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def s3(cluster: Cluster):
    return boto3.client(
        "s3",
        endpoint_url=cluster.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def bucket_keys(cluster: Cluster, prefix: str) -> list[str]:
    keys: list[str] = []
    pages = (
        s3(cluster).get_paginator("list_objects_v2").paginate(Bucket=cluster.bucket, Prefix=prefix)
    )
    for page in pages:
        keys += [entry["Key"] for entry in page.get("Contents", [])]
    return keys


@dataclass(frozen=True)
class Saved:
    """A trial as Tune's saved experiment state has it."""

    status: str
    names_a_checkpoint: bool  # one saved before its first checkpoint names none


def latest_state(cluster: Cluster, sweep_id: str) -> bytes | None:
    keys = [k for k in bucket_keys(cluster, f"tune/{sweep_id}/") if "/experiment_state" in k]
    if not keys:
        return None
    return s3(cluster).get_object(Bucket=cluster.bucket, Key=max(keys))["Body"].read()


def saved_in_state(cluster: Cluster, sweep_id: str, settle_s: float = 30) -> dict[str, Saved]:
    """The trials Tune's latest experiment state in the bucket holds, by trial id, once the
    bucket has settled: two reads a second apart agree. A read at once after the kill once
    lacked two finished trials that the resumed driver then restored as finished, most likely
    an upload the S3 server had read before the kill and wrote after it."""
    body = latest_state(cluster, sweep_id)
    deadline = time.monotonic() + settle_s
    while True:
        time.sleep(1)
        again = latest_state(cluster, sweep_id)
        if again == body:
            break
        assert time.monotonic() < deadline, f"Tune's state still changing after {settle_s} s"
        body = again
    if body is None:
        return {}
    saved = {}
    for trial_json, metadata_json in json.loads(body)["trial_data"]:
        trial = json.loads(trial_json)
        bookkeeping = _TrainingRunMetadata.from_json_state(metadata_json).checkpoint_manager
        named = bookkeeping.latest_checkpoint_result is not None
        saved[trial["trial_id"]] = Saved(trial["status"], named)
    return saved


def lost_in_study(sweep_id: str) -> int:
    """How many of the sweep's Optuna trials a resumed driver found asked for but not in Tune's
    saved state: the trials attempt 1 started after Tune's last save, whether or not the
    service's store heard of them before the head died."""
    url = beside_store("postgresql+psycopg://postgres@127.0.0.1:5432/gradreg")
    study = optuna.load_study(study_name=sweep_id, storage=url)
    return sum(LOST_ATTR in trial.user_attrs for trial in study.get_trials(deepcopy=False))


def epoch_steps(run_id: str) -> list[int]:
    return [m.step for m in MlflowClient(MLFLOW_URL).get_metric_history(run_id, "val_nll")]


def assert_each_epoch_logged_once(items: list[dict], epochs: int) -> None:
    for trial in items:
        steps = epoch_steps(trial["mlflow_run_id"])
        assert sorted(steps) == list(range(1, epochs + 1)), (trial["name"], steps)


def running_on(api: httpx.Client, sweep_id: str, worker: str, min_epoch: int) -> dict | None:
    for trial in trials(api, sweep_id):
        placement = trial.get("placement") or {}
        on_worker = WORKER_IPS.get(placement.get("node_ip")) == worker
        if trial["state"] == "running" and on_worker and (trial["epoch"] or 0) >= min_epoch:
            return trial
    return None


def two_trials_running(api: httpx.Client, name: str) -> str:
    """A sweep of two long trials without retries, once it is under way."""
    spec = sweep_spec(name, trials=2, concurrent=2, gpu=1, epochs=60, retries=0)
    sweep_id = submit(api, spec)
    wait_until(
        lambda: running_on(api, sweep_id, "ray-worker-1", min_epoch=2), 240, "a trial running"
    )
    return sweep_id


def test_a_sweep_spreads_over_both_gpu_workers(cluster, api):
    started = time.monotonic()
    sweep_id = submit(api, sweep_spec("spread", trials=4, concurrent=4, gpu=0.5))

    done = finished(api, sweep_id)
    wall_s = time.monotonic() - started

    assert done["status"] == "succeeded", done["reason"]
    items = trials(api, sweep_id)
    assert len(items) == 4 and {t["state"] for t in items} == {"succeeded"}
    placements = [t["placement"] for t in items]
    # Both workers ran trials; the head (no GPUs) ran none.
    assert {WORKER_IPS[p["node_ip"]] for p in placements} == set(WORKERS)
    # All four ran at once with 0.5 GPU each: never more than one GPU's worth on a GPU.
    per_gpu = Counter((p["node_id"], gpu) for p in placements for gpu in p["gpu_ids"])
    assert max(per_gpu.values()) * 0.5 <= 1.0, per_gpu
    assert {p["device"] for p in placements} == {"cpu"}  # no CUDA here: recorded, not hidden
    run = MlflowClient(MLFLOW_URL).get_run(items[0]["mlflow_run_id"])
    assert run.data.tags["gradreg.node_ip"] == placements[0]["node_ip"]

    # Tune's experiment state and every trial's checkpoints are in the bucket.
    tune_keys = bucket_keys(cluster, f"tune/{sweep_id}/")
    assert any(key.rsplit("/", 1)[-1].startswith("experiment_state") for key in tune_keys)
    for trial in items:
        assert any(f"/{trial['name']}/checkpoint_" in key for key in tune_keys), trial["name"]
    # The metrics are in MLflow's PostgreSQL database, each epoch once.
    run_ids = [t["mlflow_run_id"] for t in items]
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=mlflow") as db:
        (rows,) = db.execute(
            "SELECT count(*) FROM metrics WHERE key = 'val_nll' AND run_uuid = ANY(%s)",
            (run_ids,),
        ).fetchone()
    assert rows == 4 * 6
    # The reliability diagrams reached the bucket through the MLflow server.
    experiment = done["mlflow_experiment_id"]
    keys = bucket_keys(cluster, f"mlflow/{experiment}/")
    diagrams = [k for k in keys if k.endswith(f"/{DIAGRAM_FILE}")]
    assert {run_id for run_id in run_ids if any(f"/{run_id}/" in k for k in diagrams)} == set(
        run_ids
    )
    per_node = Counter(WORKER_IPS[p["node_ip"]] for p in placements)
    figure("none (placement)", sweep_s=round(wall_s), trials_per_node=dict(per_node))


def test_the_api_restarted_keeps_following_its_sweep(cluster, api):
    sweep_id = submit(api, sweep_spec("api-restart", trials=2, concurrent=2, gpu=1, epochs=20))
    wait_until(lambda: sweep(api, sweep_id)["status"] == "running", 120, "the sweep running")

    stopped = time.monotonic()
    cluster.stop("api")
    cluster.start("api")
    down_s = time.monotonic() - stopped

    done = finished(api, sweep_id)
    assert done["status"] == "succeeded", done["reason"]
    assert done["attempt"] == 1  # followed, not resubmitted
    items = trials(api, sweep_id)
    assert len(items) == 2 and {t["state"] for t in items} == {"succeeded"}
    assert_each_epoch_logged_once(items, 20)
    figure("API restarted", api_back_s=round(down_s), trials_lost=0, duplicate_epochs=0)


def test_a_worker_killed_mid_trial_resumes_it_on_the_other_node(cluster, api):
    epochs = 40
    spec = sweep_spec("worker-lost", trials=2, concurrent=2, gpu=1, epochs=epochs, hidden=(256,))
    sweep_id = submit(api, spec)
    victim = wait_until(
        lambda: running_on(api, sweep_id, "ray-worker-2", min_epoch=4), 240, "a trial on worker 2"
    )

    killed = time.monotonic()
    cluster.kill("ray-worker-2")
    try:

        def running_elsewhere() -> bool:
            moved = next(t for t in trials(api, sweep_id) if t["trial_id"] == victim["trial_id"])
            on = WORKER_IPS.get((moved.get("placement") or {}).get("node_ip"))
            return on == "ray-worker-1" and moved["state"] in ("running", "succeeded")

        wait_until(running_elsewhere, 600, "the lost trial running on worker 1")
        resumed_s = time.monotonic() - killed
        done = finished(api, sweep_id, timeout_s=600)
    finally:
        cluster.start("ray-worker-2")

    assert done["status"] == "succeeded", done["reason"]
    items = trials(api, sweep_id)
    assert len(items) == 2 and {t["state"] for t in items} == {"succeeded"}
    moved = next(t for t in items if t["trial_id"] == victim["trial_id"])
    assert WORKER_IPS[moved["placement"]["node_ip"]] == "ray-worker-1"
    run = MlflowClient(MLFLOW_URL).get_run(moved["mlflow_run_id"])
    assert run.data.tags[ATTEMPT_TAG] == "2"
    # It carried on from a checkpoint in the bucket, not from the start.
    assert 1 <= int(run.data.tags[RESUMED_TAG]) <= epochs
    assert_each_epoch_logged_once(items, epochs)
    runs = MlflowClient(MLFLOW_URL).search_runs(
        [done["mlflow_experiment_id"]],
        f"tags.mlflow.parentRunId = '{done['mlflow_parent_run_id']}'",
    )
    assert len(runs) == 2  # one run per trial, the retry's included
    figure(
        "worker SIGKILLed mid-trial",
        running_again_s=round(resumed_s),
        resumed_from_epoch=run.data.tags[RESUMED_TAG],
        store_epoch_before_kill=victim["epoch"],
        trials_lost=0,
        duplicate_epochs=0,
    )


def test_the_head_killed_and_restarted_resubmits_and_resumes_the_sweep(cluster, api):
    epochs = 40
    spec = sweep_spec("head-lost", trials=4, concurrent=2, gpu=1, epochs=epochs, hidden=(128,))
    sweep_id = submit(api, spec)

    def two_done_more_running() -> bool:
        states = Counter(t["state"] for t in trials(api, sweep_id))
        return states["succeeded"] >= 2 and states["running"] >= 1

    wait_until(two_done_more_running, 300, "two trials done, the next running")

    # The head's death ends the Ray cluster: its workers go with it. While it is down nothing
    # moves, so Tune's state in the bucket now is what attempt 2 starts from. (The trials the
    # API lists are not: a trial started in the driver's last moments may not have reached the
    # store, and one that ended may not have said so.)
    cluster.kill("ray-head")
    for worker in WORKERS:
        cluster.kill(worker)
    saved = saved_in_state(cluster, sweep_id)

    # Compose's restart policy starts all three again.
    restarting = time.monotonic()
    cluster.start("ray-head")
    for worker in WORKERS:
        cluster.start(worker)
    restarted_s = time.monotonic() - restarting

    def resubmitted() -> bool:
        state = sweep(api, sweep_id)
        return state["attempt"] == 2 and state["status"] in ("running", "succeeded")

    wait_until(resubmitted, 300, "attempt 2 running")
    resubmitted_s = time.monotonic() - restarting
    done = finished(api, sweep_id, timeout_s=600)
    assert done["status"] == "succeeded", done["reason"]
    assert done["attempt"] == 2  # the reconciler resubmitted it
    items = trials(api, sweep_id)
    succeeded = [t for t in items if t["state"] == "succeeded"]
    assert len(succeeded) == 4  # the budget, met once
    client = MlflowClient(MLFLOW_URL)
    seen = Counter()
    for trial in items:
        trial_id = trial["trial_id"]
        if trial["state"] != "succeeded":
            # Started after the last save of Tune's state that reached the bucket: lost with
            # the head, said so, and another trial ran in its place.
            assert trial_id not in saved
            assert trial["state"] == "interrupted" and trial["error"].startswith("lost:")
            seen["lost"] += 1
            continue
        # ATTEMPT_TAG counts the openings of the trial's own run.
        tags = client.get_run(trial["mlflow_run_id"]).data.tags
        if trial_id not in saved:
            # Attempt 2's own, in a lost trial's place.
            assert tags[ATTEMPT_TAG] == "1" and RESUMED_TAG not in tags
            seen["started_by_attempt_2"] += 1
        elif saved[trial_id].status == "TERMINATED":
            # Ended before the last save: attempt 2 left it as it was.
            assert tags[ATTEMPT_TAG] == "1" and RESUMED_TAG not in tags
            seen["ended_before_the_last_save"] += 1
        elif saved[trial_id].names_a_checkpoint:
            # Running at the last save (it may have ended since): attempt 2 went on from the
            # checkpoint that save names, never from the start.
            assert tags[ATTEMPT_TAG] == "2" and int(tags[RESUMED_TAG]) >= 1
            seen["resumed_from_a_checkpoint"] += 1
        else:
            # Saved before its first checkpoint: it starts again.
            assert RESUMED_TAG not in tags
            seen["saved_before_a_checkpoint_restarted"] += 1
    # One trial of attempt 2's own for each that attempt 1 started after the last save. The store
    # lists those it heard of as lost; one started in the driver's last quarter second (the
    # store's flush interval) it never heard of, but the study's record of it is written before
    # Tune starts the trial.
    lost = lost_in_study(sweep_id)
    assert seen["started_by_attempt_2"] == lost
    assert seen["lost"] <= lost
    assert len(items) == 4 + seen["lost"]
    assert_each_epoch_logged_once(succeeded, epochs)
    figure(
        "head SIGKILLed (and its workers), restarted",
        cluster_back_s=round(restarted_s),
        attempt_2_running_s=round(resubmitted_s),
        trials_in_saved_state=len(saved),
        **dict(sorted(seen.items())),
        lost_unknown_to_the_store=lost - seen["lost"],
        duplicate_epochs=0,
    )


def test_a_hung_mlflow_server_fails_the_sweep_in_bounded_time(cluster, api):
    sweep_id = two_trials_running(api, "mlflow-hung")

    cluster.pause("mlflow")  # its port still accepts connections; nothing answers
    paused = time.monotonic()
    try:
        # Each MLflow call gives up after 10 s × 2 (the harness's GRADREG_MLFLOW_TIMEOUT_S and
        # _RETRIES): the trials, then the driver, then each resubmitted attempt fail in turn.
        done = finished(api, sweep_id, timeout_s=420)
        hung_for_s = time.monotonic() - paused
    finally:
        cluster.resume("mlflow")

    assert done["status"] == "failed"
    assert "http://mlflow:5000" in done["reason"] and "timed out" in done["reason"], done["reason"]
    assert done["attempt"] == 3  # GRADREG_MAX_ATTEMPTS: every attempt ended, none hung
    items = trials(api, sweep_id)
    assert items and {t["state"] for t in items} <= {"failed", "interrupted"}
    for trial in items:
        assert "mlflow:5000" in trial["error"], trial["error"]
    assert hung_for_s < 420
    figure("MLflow server hung (SIGSTOP)", sweep_failed_after_s=round(hung_for_s), attempts=3)


def test_an_unreachable_bucket_fails_the_sweep_naming_the_storage(cluster, api):
    sweep_id = two_trials_running(api, "bucket-lost")

    killed = time.monotonic()
    cluster.kill("minio")
    try:
        done = finished(api, sweep_id, timeout_s=420)
        failed_s = time.monotonic() - killed
    finally:
        cluster.start("minio")

    assert done["status"] == "failed"
    # The storage by name: pyarrow's errors name the bucket and Tune's key in it.
    assert "bucket 'gradreg'" in done["reason"], done["reason"]
    items = trials(api, sweep_id)
    # Nothing whose checkpoint or artifacts did not reach the bucket counts as succeeded.
    assert items and {t["state"] for t in items} <= {"failed", "interrupted"}
    for trial in items:
        assert "bucket 'gradreg'" in trial["error"], trial["error"]
    figure("S3 endpoint down (SIGKILL)", sweep_failed_after_s=round(failed_s), succeeded=0)


# ---------------------------------------------------------------- a lab sharing the GPUs


def member(api: httpx.Client, name: str) -> httpx.Client:
    """A member of the lab with a token of their own, as a client of the cluster's API."""
    created = api.post("/v1/users", json={"name": name})
    assert created.status_code in (201, 409), created.text
    token = api.post(f"/v1/users/{name}/tokens", json={}).json()["token"]
    return httpx.Client(
        base_url=str(api.base_url), headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def run_times(sweep_state: dict) -> list[tuple[float, float, str]]:
    """(start, end, run id) of each trial run of a finished sweep, in seconds (a run not closed
    ends now)."""
    runs = MlflowClient(MLFLOW_URL).search_runs(
        [sweep_state["mlflow_experiment_id"]],
        f"tags.`mlflow.parentRunId` = '{sweep_state['mlflow_parent_run_id']}'",
    )
    now = time.time()
    return [
        (r.info.start_time / 1000, (r.info.end_time or now * 1000) / 1000, r.info.run_id)
        for r in runs
    ]


def most_at_once(intervals: list[tuple[float, float, str]], start: float, end: float) -> int:
    """The most of ``intervals`` running at one moment within [start, end]."""
    moments = [start] + [s for s, _, _ in intervals if start <= s <= end]
    return max((sum(s <= t < e for s, e, _ in intervals) for t in moments), default=0)


def test_two_users_share_the_gpus_equally_and_a_user_alone_gets_them_all(cluster, api):
    alice, bob = member(api, "alice"), member(api, "bob")
    with alice, bob:
        # alice fills the 4 half-GPU slots of the two workers.
        hers = submit(alice, sweep_spec("share-alice", trials=30, concurrent=4, gpu=0.5, epochs=12))
        wait_until(
            lambda: sum(t["state"] == "running" for t in trials(alice, hers)) == 4,
            240,
            "alice's sweep running 4 trials",
        )
        bob_submitted = time.time()
        his = submit(bob, sweep_spec("share-bob", trials=4, concurrent=4, gpu=0.5, epochs=3))
        wait_until(
            lambda: sweep(alice, hers)["allowance"] == 2 and sweep(bob, his)["allowance"] == 2,
            60,
            "each user's sweep allowed 2 trials",
        )
        shared_from = time.time()  # both drivers hold the new allowance within a second
        assert (
            "fair share of the cluster's 2 GPUs among 2 user(s)"
            in (sweep(alice, hers)["allowance_reason"])
        )
        bob_done = finished(bob, his)
        # bob's sweep ended: alice goes back to the whole cluster (then she stops: the rest of
        # her sweep shows nothing more).
        wait_until(
            lambda: sum(t["state"] == "running" for t in trials(alice, hers)) == 4,
            180,
            "alice's sweep running 4 trials again",
        )
        alice.post(f"/v1/sweeps/{hers}/cancel")
        alice_done = finished(alice, hers)
    assert (bob_done["status"], alice_done["status"]) == ("succeeded", "cancelled")
    a_runs, b_runs = run_times(alice_done), run_times(bob_done)
    assert len(b_runs) == 4
    # alice's trials that were running when the allowances moved end within one trial's
    # length (none is stopped); from then on, while bob's sweep wants them, each user holds 2
    # slots. (Tune starts one trial of a searched sweep at a time, so a sweep whose allowance
    # rises takes a trial's start-up per slot to fill it: alice's trials are the long ones.)
    running_then = [r for r in a_runs if r[0] <= shared_from + 1 < r[1]]
    assert running_then
    settled = max(end for _, end, _ in running_then)
    bob_start, bob_end = min(s for s, _, _ in b_runs), max(e for _, e, _ in b_runs)
    bob_driver = datetime.fromisoformat(bob_done["started_at"]).timestamp()
    trial_s = max(e - s for s, e, _ in running_then)
    # bob wants 2 or more slots until his third trial ends (then he has one trial left, and
    # what he cannot use is alice's).
    bob_wants_two = sorted(end for _, end, _ in b_runs)[2]
    seen = {
        "alice_before": most_at_once(a_runs, 0, shared_from),
        "bob_while_both": most_at_once(b_runs, bob_start, bob_end),
        "alice_while_both": most_at_once(a_runs, settled, bob_wants_two),
        "alice_after": most_at_once(a_runs, bob_end, time.time()),
    }
    figure(
        "two users, 4 half-GPU slots",
        **seen,
        bob_driver_started_s=round(bob_driver - bob_submitted, 1),
        bob_first_trial_s=round(bob_start - bob_submitted, 1),
        alice_trials_ended_s=round(settled - bob_submitted, 1),
        trial_s=round(trial_s, 1),
    )
    timeline = "\n".join(
        f"{who} {start - bob_submitted:7.1f} {end - bob_submitted:7.1f}"
        for who, (start, end, _) in sorted(
            [("alice", r) for r in a_runs] + [("bob", r) for r in b_runs], key=lambda x: x[1]
        )
    )
    expected = {"alice_before": 4, "bob_while_both": 2, "alice_while_both": 2, "alice_after": 4}
    assert seen == expected, f"runs (start, end) from bob's submission:\n{timeline}"
    # bob's first trial waits for his driver and for one of alice's trials to end, no more
    # (a trial's process takes some seconds to start and open its run).
    assert bob_start <= max(bob_driver, min(end for _, end, _ in running_then)) + 20
    # Every trial that ran, ran on a GPU worker (alice's last ones were cancelled unplaced).
    placements = [t["placement"] for t in trials(api, hers) + trials(api, his) if t["placement"]]
    assert len(placements) >= len(a_runs) + len(b_runs) - 4
    assert {WORKER_IPS[p["node_ip"]] for p in placements} <= set(WORKERS)
