"""The cluster's MLflow UI in a browser, from this machine, at the address the harness
publishes (http://10.77.0.3:5000, over the bridge): the links the API gives open the sweep's
runs and its parent run, and a trial's run opens, each in a fresh Chromium profile, with no
request of the UI refused.

MLflow refuses the UI's POSTs (the runs search) from an Origin it does not allow: without
docker-compose.yml's MLFLOW_SERVER_CORS_ALLOWED_ORIGINS the runs page shows "Request error
INTERNAL_ERROR" and a run's page "Failed to load child runs".
"""

from __future__ import annotations

import httpx
import pytest
from mlflow import MlflowClient

from localcluster.harness import MLFLOW_URL
from localcluster.sample import digits_sweep as sweep_spec
from sweeps.mlflow_ui import run_url
from tests.helpers.chromium import assert_lists_runs, assert_shows_run, dom
from tests.helpers.cluster import finished, submit, trials

pytestmark = [pytest.mark.cluster, pytest.mark.browser, pytest.mark.slow]


def a_finished_sweep(api: httpx.Client) -> dict:
    """A sweep that succeeded: one that an earlier test of this package ran (in a whole run of
    tests/cluster, test_cluster.py's), else a small one of its own."""
    response = api.get("/v1/sweeps", params={"status": "succeeded", "limit": 1})
    assert response.status_code == 200, response.text
    if listed := response.json()["items"]:
        return listed[0]
    done = finished(api, submit(api, sweep_spec("ui", trials=2, concurrent=2, epochs=2)))
    assert done["status"] == "succeeded", done["reason"]
    return done


def test_the_mlflow_ui_opens_the_apis_links_to_a_sweep(cluster, api, tmp_path):
    sweep = a_finished_sweep(api)
    experiment, parent_id = sweep["mlflow_experiment_id"], sweep["mlflow_parent_run_id"]
    client = MlflowClient(MLFLOW_URL)
    every_run = client.search_runs([experiment])
    items = trials(api, sweep["id"])
    trial_runs = [t["mlflow_run_id"] for t in items if t["mlflow_run_id"]]
    (succeeded, *_) = [t["mlflow_run_id"] for t in items if t["state"] == "succeeded"]

    screenshot = tmp_path / "mlflow-runs.png"
    runs = dom(sweep["links"]["mlflow_experiment"], tmp_path / "chrome-runs", screenshot)
    print(f"MLflow UI screenshot: {screenshot}")
    assert_lists_runs(runs, experiment, parent_id, len(every_run))

    parent = dom(sweep["links"]["mlflow_parent_run"], tmp_path / "chrome-parent")
    assert_shows_run(parent, client.get_run(parent_id), metrics=("best_val_nll",))
    # Its child runs, every trial's (the UI lists the ten newest).
    listed = [run for run in trial_runs if f"#/experiments/{experiment}/runs/{run}" in parent]
    assert len(listed) == min(10, len(trial_runs)), (listed, trial_runs)

    # The API links no trial's run: the link the CLI prints for one (its best trials').
    trial_screenshot = tmp_path / "mlflow-trial.png"
    link = run_url(MLFLOW_URL, experiment, succeeded)
    page = dom(link, tmp_path / "chrome-trial", trial_screenshot)
    print(f"MLflow UI screenshot of a trial: {trial_screenshot}")
    assert_shows_run(page, client.get_run(succeeded), metrics=("val_nll", "test_accuracy"))
