"""The MLflow UI links a sweep's report prints (`python -m sweeps run` and `resume`).

Their forms are the ones the browser tests open (tests/service/test_mlflow_ui.py): ``…/runs``
lists the runs, ``…/runs/<run id>`` is a run's page. MLflow 3 opens the bare
``#/experiments/<id>`` on its GenAI overview instead.
"""

from __future__ import annotations

import pytest

from sweeps.cli import format_outcome
from sweeps.mlflow_ui import run_url, runs_url
from sweeps.records import SweepOutcome, TrialSummary

PARENT = "a" * 32
BEST = "b" * 32


def outcome(tracking_uri: str) -> SweepOutcome:
    best = TrialSummary(
        trial_id="t1",
        name="digits-t1-t1",
        state="succeeded",
        params={"prior_variance": 0.5},
        metrics={"val_nll": 0.25},
        mlflow_run_id=BEST,
    )
    return SweepOutcome(
        sweep="digits",
        status="succeeded",
        reason="budget met",
        objectives=[{"metric": "val_nll", "goal": "minimize"}],
        trials=[best],
        best=[best],
        experiment_id="7",
        parent_run_id=PARENT,
        tracking_uri=tracking_uri,
        experiment_path="tune/digits",
    )


@pytest.mark.parametrize("base", ["http://mlflow:5000", "http://mlflow:5000/"])
def test_the_links_list_the_runs_and_open_a_run(base):
    assert runs_url(base, "7") == "http://mlflow:5000/#/experiments/7/runs"
    assert run_url(base, "7", BEST) == f"http://mlflow:5000/#/experiments/7/runs/{BEST}"


def test_a_tracking_servers_report_links_to_its_ui():
    report = format_outcome(outcome("https://mlflow.example.org"))

    runs = "https://mlflow.example.org/#/experiments/7/runs"
    assert f"\n  runs: {runs}\n" in report
    assert f"\n  parent run: {runs}/{PARENT}\n" in report
    assert f"\n  best trial digits-t1-t1: {runs}/{BEST}\n" in report
    assert "mlflow ui" not in report


def test_a_local_stores_report_says_how_to_browse_it():
    report = format_outcome(outcome("sqlite:///var/mlflow.db"))

    assert "\n  browse it: mlflow ui --backend-store-uri sqlite:///var/mlflow.db\n" in report
    # `mlflow ui`'s default address.
    ui = "http://127.0.0.1:5000"
    assert f"\n  runs: {ui}/#/experiments/7/runs\n" in report
    assert f"\n  best trial digits-t1-t1: {ui}/#/experiments/7/runs/{BEST}\n" in report
