"""Extending a sweep (issue 27): a finished sweep continues as a new attempt with more trials,
its earlier trials, study, MLflow parent run and numbering kept."""

from __future__ import annotations

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeps import SpecError, cli, resume_sweep, run_sweep
from sweeps.records import trial_number
from sweeps.statefiles import read_record
from sweeps.tracking import ROLE_TAG
from tests.helpers.specs import serial_digits_spec

EPOCHS = 2


def test_a_succeeded_sweep_extended_from_3_to_5_trials_keeps_the_first_3(
    ray_local, driver_options, tracking_uri, tmp_path, capsys
):
    spec = serial_digits_spec(
        "extended", epochs=EPOCHS, trials=3, search={"algorithm": "tpe", "seed": 0}
    )
    first = run_sweep(spec, driver_options)
    assert first.status == "succeeded" and len(first.trials) == 3

    with pytest.raises(SpecError, match="an extension only raises the budget: max_trials is 3"):
        resume_sweep("extended", driver_options, extend={"max_trials": 2})
    with pytest.raises(SpecError, match="not max_concurrent_trials"):
        resume_sweep("extended", driver_options, extend={"max_concurrent_trials": 2})

    second = resume_sweep("extended", driver_options, extend={"max_trials": 5})

    assert second.status == "succeeded", second.reason
    assert len(second.trials) == 5 and {t.state for t in second.trials} == {"succeeded"}
    after = {t.trial_id: t for t in second.trials}
    for trial in first.trials:  # untouched: the same metrics and runs
        assert after[trial.trial_id].metrics == trial.metrics
        assert after[trial.trial_id].mlflow_run_id == trial.mlflow_run_id
    assert sorted(trial_number(t.name) for t in second.trials) == [1, 2, 3, 4, 5]
    assert second.parent_run_id == first.parent_run_id

    # One study: the sampler saw the first 3 when it chose the next 2.
    storage = f"sqlite:///{tmp_path / 'tune' / 'extended' / 'optuna.db'}"
    study = optuna.load_study(study_name="extended", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([first.experiment_id])
    children = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    assert len(children) == 5
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {first.parent_run_id}
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_nll")]
        assert sorted(steps) == list(range(1, EPOCHS + 1))  # no epoch logged twice

    # The registry has a new version only if the best trial changed.
    versions = client.search_model_versions(f"name = '{spec.name}'")
    best_changed = second.best[0].trial_id != first.best[0].trial_id
    assert len(versions) == (2 if best_changed else 1)
    newest = max(versions, key=lambda v: int(v.version))
    assert second.registered_model["version"] == str(newest.version)
    assert newest.run_id == second.best[0].mlflow_run_id

    record = read_record(str(tmp_path / "tune" / "extended"))
    assert record.spec["budget"]["max_trials"] == 5
    assert record.extra["budget_changes"] == [{"extend": {"max_trials": [3, 5]}}]

    # The command line says what is wrong with a lowered budget, and runs nothing.
    lowered = [
        "resume",
        "extended",
        "--max-trials",
        "4",
        "--storage-path",
        str(tmp_path / "tune"),
        "--tracking-uri",
        tracking_uri,
    ]
    assert cli.main(lowered) == cli.EXIT_INVALID
    assert "budget.max_trials: an extension only raises the budget: max_trials is 5, not 4" in (
        capsys.readouterr().err
    )
