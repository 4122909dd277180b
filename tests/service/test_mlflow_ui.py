"""The MLflow UI shows a sweep's runs at the links gradreg gives: a real tracking server, a
real sweep, headless Chromium.

The sweep logs through the tracking server over HTTP, as trials on the cluster do. The links
`python -m sweeps run` prints are opened as they are, each in a fresh browser profile: the runs
link must list the parent run and every trial, a trial's link must show that trial's run and
metrics. The API's links come from the same function (`sweeps.mlflow_ui`); a fast test checks
their form, and tests/cluster/test_mlflow_ui.py opens them on the cluster. The screenshots are
kept under the test's tmp_path (and printed) for a person to look at.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from mlflow import MlflowClient

from service.client import describe
from service.routes.sweeps import sweep_out
from service.schemas import BestOut
from service.settings import ServiceSettings
from service.store.models import Sweep
from service.store.sweep_store import objectives_of
from sweeps.cli import format_outcome
from sweeps.driver import DriverOptions, run_sweep
from sweeps.tracking import DIAGRAM_FILE
from tests.helpers.chromium import assert_lists_runs, assert_shows_run, dom
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.specs import digits_spec


def test_the_api_links_to_the_runs_list_and_the_parent_run():
    """The links a sweep's answer gives (and `python -m service status` prints) are in the forms
    the browser tests open: ``…/runs`` lists the runs, ``…/runs/<id>`` is a run's page."""
    now = datetime.now(UTC)
    sweep = Sweep(
        id="abc", name="digits", spec={}, tags=[], status="succeeded", attempt=1,
        cancel_requested=False, mlflow_experiment_id="7", mlflow_parent_run_id="f" * 32,
        created_at=now, updated_at=now, budget_changes=[], owner="admin",
    )  # fmt: skip
    settings = ServiceSettings(mlflow_ui_url="https://mlflow.example.org/")

    answer = sweep_out(settings, None, sweep, counts={}).model_dump(mode="json")

    runs = "https://mlflow.example.org/#/experiments/7/runs"
    assert answer["links"]["mlflow_experiment"] == runs
    assert answer["links"]["mlflow_parent_run"] == f"{runs}/{'f' * 32}"
    objectives = [o.model_dump(mode="json") for o in objectives_of(sweep.spec)]
    best = BestOut(objectives=objectives, pareto=False, basis=None, best=[])
    printed = describe(answer, [], best.model_dump(mode="json"))
    assert f"  MLflow runs: {runs}\n" in printed
    assert f"  MLflow parent run: {runs}/{'f' * 32}\n" in printed


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path).start()
    yield server.url
    server.stop()


def printed_links(report: str) -> dict[str, str]:
    """The MLflow UI links in the CLI's report, by what they name ("runs", "best trial NAME")."""
    return dict(re.findall(r"^  ([\w .#-]+): (http\S+)$", report, re.M))


@pytest.mark.browser
def test_mlflow_ui_shows_the_runs_the_cli_links_to(ray_local, mlflow_server, tmp_path, capfd):
    spec = digits_spec(name="ui-sweep", budget={"max_trials": 2, "max_concurrent_trials": 2})
    options = DriverOptions(
        tracking_uri=mlflow_server, storage_path=str(tmp_path / "tune"), quiet=True
    )
    outcome = run_sweep(spec, options)
    assert outcome.status == "succeeded"
    report = format_outcome(outcome)
    links = printed_links(report)
    (best,) = outcome.best
    assert set(links) == {"runs", "parent run", f"best trial {best.name}"}, links
    # No other link into the UI was printed on the way (MLflow's own "View experiment at"
    # link opens its GenAI overview): each one printed opens the runs or a run.
    printed = capfd.readouterr().out + report
    for link in re.findall(r"\S+/#/experiments/\S*", printed):
        assert re.fullmatch(r".+/#/experiments/\d+/runs(/[0-9a-f]{32})?", link), link

    screenshot = tmp_path / "mlflow-ui.png"
    runs = dom(links["runs"], tmp_path / "chrome-runs", screenshot)
    print(f"MLflow UI screenshot: {screenshot}")
    assert_lists_runs(runs, outcome.experiment_id, outcome.parent_run_id, 1 + len(outcome.trials))
    assert screenshot.stat().st_size > 10_000

    trial_screenshot = tmp_path / "mlflow-ui-trial.png"
    page = dom(links[f"best trial {best.name}"], tmp_path / "chrome-trial", trial_screenshot)
    print(f"MLflow UI screenshot of a trial: {trial_screenshot}")
    run = MlflowClient(mlflow_server).get_run(best.mlflow_run_id)
    assert_shows_run(page, run, metrics=("val_nll", "test_accuracy"))

    # The trial's reliability diagram, an SVG artifact, is shown as an image.
    diagram_screenshot = tmp_path / "mlflow-ui-diagram.png"
    diagram_url = f"{links[f'best trial {best.name}']}/artifacts/{DIAGRAM_FILE}"
    page = dom(diagram_url, tmp_path / "chrome-diagram", diagram_screenshot)
    print(f"MLflow UI screenshot of a trial's diagram: {diagram_screenshot}")
    assert re.search(rf'<img alt="{re.escape(DIAGRAM_FILE)}" src="blob:', page), page[-2000:]
