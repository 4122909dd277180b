"""The images built and docker-compose.yml run on Podman: a sweep through the API container,
its trials on both worker containers, its artifacts in the bucket through the MLflow server,
its model in the registry; then containers killed and restarted on purpose.

The tests run in this order and share the stack: each leaves it whole again.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
from mlflow import MlflowClient

from localcluster.containers import WORKERS, ContainerStack
from localcluster.sample import digits_sweep as sweep_spec
from sweeps.tracking import ATTEMPT_TAG, DIAGRAM_FILE, RESUMED_TAG
from tests.helpers import poll_until
from tests.helpers.api import FINAL
from tests.helpers.cluster import submit, trials

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LONG_RUNNING = ("postgres", "minio", "mlflow", "ray-head", "ray-worker", "api")


def figure(fault: str, **values: object) -> None:
    """One line of RELIABILITY.md's container table (`pytest -s tests/containers`)."""
    print(f"\ncontainer figure: {fault}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def worker_addresses(stack: ContainerStack) -> dict[str, str]:
    """The worker containers' addresses on the compose network, by container name."""
    return {c.address: c.name for c in stack.containers("ray-worker") if c.state == "running"}


def state_of(api: httpx.Client, sweep_id: str) -> dict[str, Any] | None:
    """The sweep, or None while the API does not answer (a restart)."""
    try:
        response = api.get(f"/v1/sweeps/{sweep_id}")
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def finished(stack: ContainerStack, api: httpx.Client, sweep_id: str, timeout_s: float = 600):
    def done() -> dict[str, Any] | None:
        state = state_of(api, sweep_id)
        return state if state and state["status"] in FINAL else None

    return poll_until(
        done,
        timeout_s,
        f"sweep {sweep_id} finishing",
        interval_s=2,
        detail=lambda: f"{state_of(api, sweep_id)}\n{stack.logs()}",
    )


def diagram_artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for entry in client.list_artifacts(run_id, path):
        if entry.is_dir:
            found += diagram_artifacts(client, run_id, entry.path)
        elif entry.path.endswith(DIAGRAM_FILE):
            found.append(entry.path)
    return found


def test_every_service_is_up_and_healthy(stack):
    containers = stack.containers()
    by_service = Counter(c.service for c in containers)
    assert by_service == {**{name: 1 for name in LONG_RUNNING}, "ray-worker": WORKERS,
                          "minio-init": 1}  # fmt: skip
    for container in containers:
        if container.service == "minio-init":  # one-shot: made the bucket and exited
            assert (container.state, container.exit_code) == ("exited", 0), container
        else:
            assert (container.state, container.health) == ("running", "healthy"), container


def test_a_sweep_through_the_api_container_runs_on_both_worker_containers(stack, api, monkeypatch):
    started = time.monotonic()
    sweep_id = submit(api, sweep_spec("containers", trials=4, concurrent=4, gpu=0.5))

    done = finished(stack, api, sweep_id)
    wall_s = time.monotonic() - started

    assert done["status"] == "succeeded", done["reason"]
    items = trials(api, sweep_id)
    assert len(items) == 4 and {t["state"] for t in items} == {"succeeded"}
    # Both worker containers ran trials; the head (no GPUs, no CPUs for trials) ran none.
    workers = worker_addresses(stack)
    assert len(workers) == WORKERS
    placements = [t["placement"] for t in items]
    assert {workers[p["node_ip"]] for p in placements} == set(workers.values())
    assert {p["device"] for p in placements} == {"cpu"}

    # Each trial's reliability diagram, read back through the MLflow server from the bucket.
    # An MLflow 3 client asks the server for a presigned URL on the bucket's endpoint as the
    # server knows it (http://minio:9000), which only the compose network resolves: a client
    # outside it downloads through the server (docs/deploy.md, "Artifacts from outside").
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
    client = MlflowClient(stack.mlflow_url)
    for trial in items:
        (diagram,) = diagram_artifacts(client, trial["mlflow_run_id"])
        local = client.download_artifacts(trial["mlflow_run_id"], diagram)
        assert ElementTree.parse(local).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    # The best trial's model, in the registry of the MLflow server's PostgreSQL database.
    registered = done["registered_model"]
    version = client.get_model_version(registered["name"], registered["version"])
    assert version.status == "READY"
    assert version.run_id in {t["mlflow_run_id"] for t in items}
    figure(
        "none (placement)",
        sweep_s=round(wall_s),
        trials_per_container=dict(Counter(workers[p["node_ip"]] for p in placements)),
    )


def test_the_api_container_restarted_keeps_following_its_sweep(stack, api):
    epochs = 20
    sweep_id = submit(api, sweep_spec("api-restart", trials=2, concurrent=2, gpu=1, epochs=epochs))
    poll_until(
        lambda: (state_of(api, sweep_id) or {}).get("status") == "running",
        180,
        "the sweep running",
        interval_s=1,
    )

    restarted = time.monotonic()
    stack.compose("restart", "api")
    (_container,) = stack.containers("api")
    poll_until(
        lambda: stack.containers("api")[0].health == "healthy",
        300,
        "the API container healthy again",
        interval_s=1,
    )
    back_s = time.monotonic() - restarted

    done = finished(stack, api, sweep_id)
    assert done["status"] == "succeeded", done["reason"]
    assert done["attempt"] == 1  # followed, not resubmitted
    items = trials(api, sweep_id)
    assert len(items) == 2 and {t["state"] for t in items} == {"succeeded"}
    client = MlflowClient(stack.mlflow_url)
    for trial in items:
        steps = [m.step for m in client.get_metric_history(trial["mlflow_run_id"], "val_nll")]
        assert sorted(steps) == list(range(1, epochs + 1)), (trial["name"], steps)
    figure("API container restarted", healthy_again_s=round(back_s), trials_lost=0,
           duplicate_epochs=0)  # fmt: skip


def test_a_worker_container_killed_mid_trial_resumes_it_from_its_checkpoint(stack, api):
    epochs = 40
    spec = sweep_spec("worker-killed", trials=2, concurrent=2, gpu=1, epochs=epochs, hidden=(256,))
    sweep_id = submit(api, spec)
    workers = worker_addresses(stack)
    victim_container = sorted(workers.values())[-1]

    def running_on_victim() -> dict[str, Any] | None:
        for trial in trials(api, sweep_id):
            node = (trial.get("placement") or {}).get("node_ip")
            if trial["state"] == "running" and workers.get(node) == victim_container:
                return trial if (trial["epoch"] or 0) >= 4 else None
        return None

    victim = poll_until(running_on_victim, 300, f"a trial on {victim_container}", interval_s=1)
    killed = time.monotonic()
    stack.kill(victim_container)

    def running_again() -> dict[str, Any] | None:
        trial = next(t for t in trials(api, sweep_id) if t["trial_id"] == victim["trial_id"])
        node = (trial.get("placement") or {}).get("node_ip")
        moved = (
            trial["state"] in ("running", "succeeded") and node != victim["placement"]["node_ip"]
        )
        return trial if moved else None

    poll_until(running_again, 600, "the killed trial running again", interval_s=1)
    again_s = time.monotonic() - killed
    done = finished(stack, api, sweep_id)

    assert done["status"] == "succeeded", done["reason"]
    items = trials(api, sweep_id)
    assert len(items) == 2 and {t["state"] for t in items} == {"succeeded"}
    moved = next(t for t in items if t["trial_id"] == victim["trial_id"])
    tags = MlflowClient(stack.mlflow_url).get_run(moved["mlflow_run_id"]).data.tags
    assert tags[ATTEMPT_TAG] == "2"
    # It went on from its checkpoint in the bucket, not from the start.
    assert 1 <= int(tags[RESUMED_TAG]) <= epochs
    # Podman takes `podman kill` for an operator's stop: restart: unless-stopped leaves the
    # container exited (a process that dies of itself is restarted). The operator starts it.
    (after,) = [c for c in stack.containers("ray-worker") if c.name == victim_container]
    if after.state != "running":
        stack.start(victim_container)
    poll_until(
        lambda: [c.health for c in stack.containers("ray-worker")] == ["healthy"] * WORKERS,
        300,
        "both worker containers healthy again",
        interval_s=1,
        detail=stack.logs,
    )
    figure(
        "worker container killed mid-trial (podman kill)",
        trial_running_again_s=round(again_s),
        resumed_from_epoch=tags[RESUMED_TAG],
        store_epoch_before_kill=victim["epoch"],
        left_by_restart_policy=f"{after.state} (exit {after.exit_code})",
        trials_lost=0,
    )
