"""Links into the MLflow UI: the one place their format is written (the API and the CLI use it).

Light on purpose (no MLflow, Ray or torch): the API builds every sweep's links with it.
"""

from __future__ import annotations


def runs_url(ui_url: str, experiment_id: str) -> str:
    """The list of an experiment's runs in the MLflow UI whose base URL is ``ui_url``.

    Not the bare ``#/experiments/<id>``: MLflow 3's UI opens that on its GenAI overview
    (traces, no runs) in a fresh browser, even for an experiment tagged
    ``mlflow.experimentKind: custom_model_development``.
    """
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs"


def run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    """One run's page in the MLflow UI: its parameters, metrics, tags and artifacts."""
    return f"{runs_url(ui_url, experiment_id)}/{run_id}"
