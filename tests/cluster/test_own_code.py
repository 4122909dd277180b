"""A code bundle on the local cluster: uploaded through the API (which keeps it in the bucket,
as compose's does), carried by the sweep's Ray Job to the head, and imported by trials on
both GPU workers, which never saw the code. The harness's .env turns bundles on
(GRADREG_ALLOW_USER_CODE=true), as an operator's would."""

from __future__ import annotations

import shutil
from pathlib import Path

import boto3
import pytest

from localcluster.harness import NODES, WORKERS, Cluster
from service.code_store import bundle_name
from sweeps.code import pack_directory
from tests.helpers.cluster import finished, submit, trials

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

WORKER_IPS = {NODES[name].address: name for name in WORKERS}
EXAMPLE_CODE = Path(__file__).parents[2] / "examples" / "own-model" / "src"


def own_mixer_sweep(digest: str) -> dict:
    """The example's network and loader, 4 trials at once of half a GPU each: two a worker."""
    return {
        "name": "own-code",
        "dataset": {"entry_point": "mydata.signals:load", "options": {"n": 400, "noise": 0.3}},
        "model": {"entry_point": "mynets.mixer:build", "options": {"width": 16, "depth": 1}},
        "code": {"digest": digest},
        "method": "vl-uniform",
        "fixed": {"epochs": 2, "batch_size": 64, "lr": 0.003},
        "parameters": {"noise_scale": {"type": "float", "low": 0.001, "high": 0.1, "scale": "log"}},
        "objectives": [{"metric": "val_nll", "goal": "minimize"}],
        "search": {"algorithm": "random", "seed": 0},
        "budget": {"max_trials": 4, "max_concurrent_trials": 4},
        "resources": {"cpu": 1, "gpu": 0.5},
    }


def test_a_bundle_reaches_both_workers_and_their_trials_import_it(cluster: Cluster, api, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE_CODE, source, ignore=shutil.ignore_patterns("__pycache__"))
    bundle = pack_directory(source)
    uploaded = api.post("/v1/code", content=bundle, headers={"Content-Type": "application/zip"})
    assert uploaded.status_code == 201, uploaded.text
    digest = uploaded.json()["digest"]
    # In the bucket, where compose's API keeps them (GRADREG_CODE_STORE).
    s3 = boto3.client(
        "s3",
        endpoint_url=cluster.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    stored = s3.get_object(Bucket=cluster.bucket, Key=f"code/{bundle_name(digest)}")
    assert stored["Body"].read() == bundle

    sweep_id = submit(api, own_mixer_sweep(digest))
    done = finished(api, sweep_id, timeout_s=600)
    assert done["status"] == "succeeded", done["reason"]
    items = trials(api, sweep_id)
    assert len(items) == 4 and {t["state"] for t in items} == {"succeeded"}, items
    # Each worker ran trials of the user's network, which it could only import from the bundle.
    workers = {WORKER_IPS.get(t["placement"]["node_ip"]) for t in items}
    assert workers == set(WORKERS), [t["placement"] for t in items]
