"""MLflow records: parent reuse, one child per trial across attempts, artifacts."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gradreg.evaluation.metrics import reliability_bins
from sweeps.ensemble import SweepEnsemble
from sweeps.records import trial_number
from sweeps.tracking import (
    ATTEMPT_TAG,
    DIAGRAM_FILE,
    ENSEMBLE_TEMPERATURE_TAG,
    PARENT_RUN_TAG,
    STATUS_TAG,
    SWEEP_TAG,
    TEMPERATURE_TAG,
    TRIAL_NAME_TAG,
    TRIAL_TAG,
    Tracker,
    trial_run_name,
)


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
    assert files == {"final_metrics.json", "reliability_bins.json", DIAGRAM_FILE}

    tracker.finish_parent(parent, "FINISHED", {"status": "succeeded"}, {"best_val_nll": 0.5})
    run = tracker.client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["best_val_nll"] == 0.5
    assert run.data.tags[STATUS_TAG] == "succeeded"
    assert tracker.running_trials(experiment, parent) == {}


def test_runs_are_named_for_people_and_keep_their_ids_as_tags(tracking_uri):
    tracker = Tracker(tracking_uri)
    experiment = tracker.experiment_id("exp")
    parent = tracker.open_parent(
        experiment, "3f2a9c", {}, {}, "noise scale x prior variance", run_name="digits-vl"
    )
    run = tracker.client.get_run(parent)
    assert run.info.run_name == "digits-vl"
    assert run.data.tags[SWEEP_TAG] == "3f2a9c"
    assert run.data.tags["mlflow.note.content"] == "noise scale x prior variance"

    name = trial_run_name("digits-vl", trial_number("3f2a9c-t7-ab12cd34"), "vl-uniform")
    assert name == "digits-vl #7 vl-uniform"
    trial = tracker.open_trial(
        experiment, parent, "3f2a9c", "ab12cd34", "3f2a9c-t7-ab12cd34", {}, run_name=name
    )
    run = tracker.client.get_run(trial.run_id)
    assert run.info.run_name == "digits-vl #7 vl-uniform"
    assert run.data.tags[TRIAL_TAG] == "ab12cd34"
    assert run.data.tags[TRIAL_NAME_TAG] == "3f2a9c-t7-ab12cd34"
    (summary,) = tracker.trial_summaries(experiment, parent)
    assert summary.name == "3f2a9c-t7-ab12cd34"  # Tune's name, as the store knows it
    # A trial saved before trials were numbered keeps a name without a number.
    assert trial_number("digits-vl-ab12cd34") is None
    assert trial_run_name("digits-vl", None, "map") == "digits-vl map"


def test_a_file_dataset_is_a_run_input_with_its_path_and_digest(tracking_uri):
    tracker = Tracker(tracking_uri)
    experiment = tracker.experiment_id("exp")
    run_id = tracker.client.create_run(experiment).info.run_id
    digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    summary = {
        "name": "file",
        "n_train": 80,
        "n_val": 10,
        "n_test": 10,
        "n_classes": 2,
        "input_shape": (3,),
        "class_names": ["cat", "dog"],
        "source": {"name": "file", "path": "/data/pets.csv", "format": "csv", "digest": digest},
    }
    tracker.log_dataset(run_id, summary)
    tracker.log_dataset(run_id, summary)  # a resumed trial logs it again: still one input
    (logged,) = tracker.client.get_run(run_id).inputs.dataset_inputs
    assert logged.dataset.name == "pets.csv"
    assert logged.dataset.source_type == "local"
    assert json.loads(logged.dataset.source) == {"uri": "/data/pets.csv"}
    assert logged.dataset.digest == digest[:16]
    profile = json.loads(logged.dataset.profile)
    assert profile["source"]["digest"] == digest and profile["class_names"] == ["cat", "dog"]
    assert {t.key: t.value for t in logged.tags} == {"mlflow.data.context": "training"}


def test_concurrent_trials_log_the_same_dataset(tracking_uri):
    # Trials of a sweep start together and log one dataset: the unique key on MLflow's
    # dataset rows must not fail all but one of them.
    tracker = Tracker(tracking_uri)
    experiment = tracker.experiment_id("exp")
    rounds, width = 8, 4
    runs = [[tracker.client.create_run(experiment).info.run_id for _ in range(width)]
            for _ in range(rounds)]  # fmt: skip
    for index, group in enumerate(runs):
        summary = {"name": f"set{index}", "n_classes": 2, "source": {"name": f"set{index}"}}
        barrier = threading.Barrier(width)

        def log(run_id: str, summary: dict = summary, barrier=barrier) -> None:
            barrier.wait()
            Tracker(tracking_uri).log_dataset(run_id, summary)

        with ThreadPoolExecutor(width) as pool:
            list(pool.map(log, group))
        for run_id in group:
            (logged,) = tracker.client.get_run(run_id).inputs.dataset_inputs
            assert logged.dataset.name == f"set{index}"


def test_an_unfitted_temperature_is_a_tag_that_a_fitted_one_clears(tracking_uri):
    tracker = Tracker(tracking_uri)
    experiment = tracker.experiment_id("exp")
    parent = tracker.open_parent(experiment, "s", {}, {}, "")
    trial = tracker.open_trial(experiment, parent, "s", "t", "s-t", {})
    reason = "not fitted: all 27 validation examples are classified correctly with a margin"
    metrics = {"val_temperature": 1.0, "val_temperature_fitted": 0.0}
    tracker.log_outcome(trial.run_id, metrics, None, "t", False, temperature_scaling=reason)
    assert tracker.client.get_run(trial.run_id).data.tags[TEMPERATURE_TAG] == reason
    # A retry whose final evaluation fitted T leaves no stale reason behind.
    tracker.log_outcome(trial.run_id, {**metrics, "val_temperature_fitted": 1.0}, None, "t", False)
    assert TEMPERATURE_TAG not in tracker.client.get_run(trial.run_id).data.tags

    member = {"trial_id": "t", "name": "s-t", "mlflow_run_id": trial.run_id, "weight": 1.0}
    unfitted = SweepEnsemble("top", 5, [member], metrics, None, 1, temperature_scaling=reason)
    tracker.log_ensemble(parent, unfitted)
    run = tracker.client.get_run(parent)
    assert run.data.tags[ENSEMBLE_TEMPERATURE_TAG] == reason
    assert run.data.metrics["ensemble_val_temperature_fitted"] == 0.0
    with open(tracker.client.download_artifacts(parent, "ensemble.json")) as handle:
        stored = json.load(handle)
    assert (stored["size"], stored["requested"], stored["temperature_scaling"]) == (1, 5, reason)
    tracker.log_ensemble(parent, SweepEnsemble("top", 1, [member], metrics, None, 1))
    assert ENSEMBLE_TEMPERATURE_TAG not in tracker.client.get_run(parent).data.tags
