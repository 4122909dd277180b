"""Trials record where they ran; a GPU asked for but not there never passes silently.

The session's Ray declares one logical GPU on this CPU machine, as a harness worker node does
(`ray start --num-gpus=1`): Ray assigns it, and the trial's process sees no CUDA device.
"""

from __future__ import annotations

import pytest
import ray
import torch
from mlflow import MlflowClient

from sweeps import TrialEvent, run_sweep
from sweeps.placement import (
    DEVICE_TAG,
    DEVICE_WARNING_TAG,
    GPU_IDS_TAG,
    NODE_ID_TAG,
    NODE_IP_TAG,
    Placement,
    trial_device,
)
from sweeps.tracking import ERROR_TAG, ROLE_TAG
from tests.helpers.specs import DIGITS_SWEEP, digits_spec

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks a node whose trials see no CUDA device"
)
AUTO = {k: v for k, v in DIGITS_SWEEP["fixed"].items() if k != "device"}


def trial_runs(tracking_uri: str, experiment: str):
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    return [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]


def test_a_trial_records_its_node_and_gpus_and_says_it_trained_on_the_cpu(
    ray_local, driver_options, tracking_uri
):
    spec = digits_spec(
        name="digits-placed",
        fixed=AUTO,
        resources={"cpu": 1, "gpu": 0.5},
        budget={"max_trials": 2, "max_concurrent_trials": 2},
    )
    events: list[TrialEvent] = []
    outcome = run_sweep(spec, driver_options, on_trial=events.append)

    assert outcome.counts() == {"succeeded": 2}
    node = ray.nodes()[0]
    # The driver's events carry it too (for the store and GET /v1/sweeps/{id}/trials).
    finished = [e for e in events if e.state == "succeeded"]
    assert len(finished) == 2
    for finished_event in finished:
        assert finished_event.placement == {
            "node_id": node["NodeID"],
            "node_ip": node["NodeManagerAddress"],
            "gpu_ids": ["0"],
            "device": "cpu",
        }
    runs = trial_runs(tracking_uri, spec.name)
    assert len(runs) == 2
    for run in runs:
        tags = run.data.tags
        assert tags[NODE_ID_TAG] == node["NodeID"]
        assert tags[NODE_IP_TAG] == node["NodeManagerAddress"]
        assert tags[GPU_IDS_TAG] == "0"  # two half-GPU trials share the one GPU
        assert tags[DEVICE_TAG] == "cpu"
        warning = tags[DEVICE_WARNING_TAG]
        assert "resources.gpu=0.5" in warning and node["NodeManagerAddress"] in warning
        assert "no CUDA device" in warning


def test_a_trial_that_insists_on_cuda_fails_naming_the_node(
    ray_local, driver_options, tracking_uri
):
    spec = digits_spec(
        name="digits-cuda-only",
        fixed={**AUTO, "device": "cuda"},
        resources={"cpu": 1, "gpu": 1},
        budget={"max_trials": 1, "max_concurrent_trials": 1, "max_failed_trials": 1},
    )
    outcome = run_sweep(spec, driver_options)

    (trial,) = outcome.trials
    assert trial.state == "failed"
    node_ip = ray.nodes()[0]["NodeManagerAddress"]
    assert f"device 'cuda': node {node_ip}" in trial.error
    assert "shows this trial no CUDA device" in trial.error
    (run,) = trial_runs(tracking_uri, spec.name)
    assert run.info.status == "FAILED"
    assert node_ip in run.data.tags[ERROR_TAG]
    assert run.data.tags[GPU_IDS_TAG] == "0"


def test_the_device_rule_on_a_node_without_cuda():
    here = Placement("f" * 40, "10.0.0.2", ())
    assert trial_device("auto", 0, here) == (torch.device("cpu"), None)
    assert trial_device("cpu", 0, here) == (torch.device("cpu"), None)
    device, warning = trial_device("auto", 1, here)
    assert device == torch.device("cpu")
    assert "resources.gpu=1, but node 10.0.0.2 (Ray node ffffffffffff, GPU ids none)" in warning
    with pytest.raises(RuntimeError, match=r"device 'cuda:1': node 10\.0\.0\.2 .* no CUDA"):
        trial_device("cuda:1", 1, here)
