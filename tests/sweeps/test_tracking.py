"""MLflow records: parent reuse, one child per trial across attempts, artifacts."""

from __future__ import annotations

import numpy as np

from gradreg.metrics import reliability_bins
from sweeps.tracking import ATTEMPT_TAG, PARENT_RUN_TAG, STATUS_TAG, Tracker


def test_parent_is_reused_and_a_trial_keeps_one_run_across_attempts(tracking_uri, tmp_path):
    tracker = Tracker(tracking_uri)
    experiment = tracker.experiment_id("exp")
    assert tracker.experiment_id("exp") == experiment
    found = tracker.client.get_experiment(experiment)
    assert found.artifact_location == (tmp_path / "mlartifacts" / "exp").as_uri()
    assert found.tags["mlflow.experimentKind"] == "custom_model_development"

    parent = tracker.open_parent(experiment, "sweep-a", {"dataset": "digits"}, {}, "about a")
    assert tracker.open_parent(experiment, "sweep-a", {}, {}, "") == parent
    assert tracker.open_parent(experiment, "sweep-b", {}, {}, "") != parent

    first = tracker.open_trial(experiment, parent, "sweep-a", "t1", "sweep-a-t1", {"lr": 0.1})
    assert (first.attempt, first.logged_through_epoch) == (1, 0)
    tracker.log_epochs(first.run_id, [(1, {"val_nll": 1.0, "epoch": 1})])
    tracker.log_epochs(first.run_id, [(2, {"val_nll": 0.9, "epoch": 2})])
    tracker.close_trial(first.run_id, "FAILED", "failed", "RuntimeError: boom")

    again = tracker.open_trial(experiment, parent, "sweep-a", "t1", "sweep-a-t1", {"lr": 0.1})
    assert (again.run_id, again.attempt, again.logged_through_epoch) == (first.run_id, 2, 2)
    run = tracker.client.get_run(again.run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags[ATTEMPT_TAG] == "2" and run.data.tags[STATUS_TAG] == "running"
    assert run.data.tags[PARENT_RUN_TAG] == parent
    assert tracker.running_trials(experiment, parent) == {again.run_id: "t1"}

    other = tracker.open_trial(experiment, parent, "sweep-a", "t2", "sweep-a-t2", {"lr": 0.2})
    assert other.run_id != first.run_id


def test_outcome_files_and_parent_summary(tracking_uri):
    tracker = Tracker(tracking_uri)
    experiment = tracker.experiment_id("exp")
    parent = tracker.open_parent(experiment, "s", {}, {}, "")
    trial = tracker.open_trial(experiment, parent, "s", "t", "s-t", {})
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=50)
    bins = reliability_bins(probs, rng.integers(0, 3, size=50))
    tracker.log_outcome(trial.run_id, {"test_nll": 1.2}, bins, "vl-uniform", diagram=True)
    tracker.close_trial(trial.run_id, "FINISHED", "succeeded")
    files = {a.path for a in tracker.client.list_artifacts(trial.run_id)}
    assert files == {"final_metrics.json", "reliability_bins.json", "reliability.png"}

    tracker.finish_parent(parent, "FINISHED", {"status": "succeeded"}, {"best_val_nll": 0.5})
    run = tracker.client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["best_val_nll"] == 0.5
    assert run.data.tags[STATUS_TAG] == "succeeded"
    assert tracker.running_trials(experiment, parent) == {}
