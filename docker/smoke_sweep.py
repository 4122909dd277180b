"""Run by docker/smoke.sh inside the api container: a two-trial, one-epoch CIFAR-10 ResNet-18
sweep on the GPUs, submitted through the API, then its runs looked up in MLflow.

Exits 0 when the sweep succeeded and MLflow holds a child run for each of its trials.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

EXAMPLE = Path("/opt/gradreg/examples/cifar10-resnet18-gpu.yaml")
API_URL = "http://127.0.0.1:8000"
TRIALS = 2


def smoke_spec(example: dict[str, Any], name: str) -> dict[str, Any]:
    """The GPU example, cut down to minutes: two trials of one epoch, half a GPU each."""
    spec = {**example, "name": name, "tags": [*example.get("tags", []), "smoke"]}
    spec["fixed"] = {**example["fixed"], "epochs": 1}
    spec["search"] = {**example["search"], "n_startup_trials": TRIALS}
    spec["early_stopping"] = {"kind": "none"}
    spec["budget"] = {
        "max_trials": TRIALS,
        "max_concurrent_trials": TRIALS,
        "max_failed_trials": 0,
        "time_budget_s": 1800,
    }
    spec["resources"] = {"cpu": 2, "gpu": 0.5}
    spec["fault_tolerance"] = {"max_retries_per_trial": 1, "checkpoint_every_epochs": 1}
    return spec


def mlflow_child_runs(tracking_uri: str, experiment_id: str, parent_run_id: str) -> list[dict]:
    body = {
        "experiment_ids": [experiment_id],
        "filter": f"tags.mlflow.parentRunId = '{parent_run_id}'",
        "max_results": 100,
    }
    request = urllib.request.Request(
        f"{tracking_uri}/api/2.0/mlflow/runs/search",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response).get("runs", [])


def main() -> int:
    from service.client import Client, describe

    token = os.environ["GRADREG_API_TOKENS"].split(",")[0].strip()
    client = Client(API_URL, token)
    spec = smoke_spec(yaml.safe_load(EXAMPLE.read_text()), f"smoke-gpu-{int(time.time())}")
    sweep = client.submit(spec)
    print(f"submitted {sweep['id']} ({sweep['name']})", flush=True)
    sweep = client.wait(sweep["id"], poll_s=5.0)
    trials = client.trials(sweep["id"])
    print(describe(sweep, trials))
    if sweep["status"] != "succeeded" or len(trials) != TRIALS:
        print(f"smoke: sweep {sweep['status']} with {len(trials)} trials", file=sys.stderr)
        return 1
    runs = mlflow_child_runs(
        os.environ["GRADREG_TRACKING_URI"],
        sweep["mlflow_experiment_id"],
        sweep["mlflow_parent_run_id"],
    )
    finished = [run for run in runs if run["info"]["status"] == "FINISHED"]
    print(f"MLflow: {len(finished)}/{len(runs)} child runs finished")
    if len(finished) != TRIALS:
        print(f"smoke: expected {TRIALS} finished MLflow runs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
