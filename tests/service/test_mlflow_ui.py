"""The MLflow UI lists a sweep's runs: a real tracking server, a real sweep, headless Chromium.

The sweep logs through the tracking server over HTTP, as trials on the cluster do, and the UI
page of its experiment must name the parent run and every trial. The screenshot is kept under
the test's tmp_path (and printed) for a person to look at.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from sweeps.driver import DriverOptions, run_sweep
from tests.service.mlflow_server import MlflowServer
from tests.sweeps.conftest import digits_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path).start()
    yield server.url
    server.stop()


@pytest.mark.browser
def test_mlflow_ui_lists_the_sweeps_runs(ray_local, mlflow_server, tmp_path):
    if CHROMIUM is None:
        pytest.fail("this test needs Chromium: apt-get install chromium (.ci/run installs it)")
    spec = digits_spec(name="ui-sweep", budget={"max_trials": 2, "max_concurrent_trials": 2})
    options = DriverOptions(
        tracking_uri=mlflow_server, storage_path=str(tmp_path / "tune"), quiet=True
    )
    outcome = run_sweep(spec, options)
    assert outcome.status == "succeeded"

    page = f"{mlflow_server}/#/experiments/{outcome.experiment_id}/runs"
    screenshot = tmp_path / "mlflow-ui.png"
    common = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}",
        "--window-size=1600,1000", "--virtual-time-budget=20000",
    ]  # fmt: skip
    dom = subprocess.run(
        [*common, "--dump-dom", page], capture_output=True, text=True, timeout=120
    ).stdout
    subprocess.run([*common, f"--screenshot={screenshot}", page], capture_output=True, timeout=120)

    # The runs table shows the parent run, its trials nested under it (collapsed), and the
    # count of every run in the experiment.
    assert "Training runs" in dom
    assert ">ui-sweep</a>" in dom, f"the parent run is not listed on {page}"
    assert f"<strong>{1 + len(outcome.trials)}</strong> matching runs" in dom
    assert screenshot.stat().st_size > 10_000
    print(f"MLflow UI screenshot: {screenshot}")
