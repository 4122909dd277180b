"""The driver end to end: real Ray Tune, real Optuna, real MLflow on SQLite."""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from xml.etree import ElementTree

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from ray.tune import ExperimentAnalysis

from sweeps import TrialEvent, resume_sweep, run_sweep
from sweeps.driver import SweepExistsError
from sweeps.model import logged_model_uri
from sweeps.records import LOST_TRIAL as LOST_TRIAL_RUN
from sweeps.records import best_trials
from sweeps.tracking import (
    ATTEMPT_TAG,
    DIAGRAM_FILE,
    ERROR_TAG,
    PARENT_RUN_TAG,
    ROLE_TAG,
    STATUS_TAG,
    TRIAL_TAG,
    Tracker,
)
from tests.helpers.specs import digits_spec, serial_digits_spec


def runs_of(tracking_uri: str, experiment: str):
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"]
    children = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    return client, parents, children


def test_digits_sweep_end_to_end(ray_local, driver_options, tracking_uri):
    spec = digits_spec()
    events: list[TrialEvent] = []
    stream = io.StringIO()
    options = driver_options.__class__(
        **{**driver_options.__dict__, "quiet": False, "stream": stream}
    )

    outcome = run_sweep(spec, options, on_trial=events.append)

    assert outcome.status == "succeeded"
    assert outcome.counts() == {"succeeded": 4}
    for trial in outcome.trials:
        assert set(trial.params) == {"noise_scale", "prior_variance"}
        assert 0.001 <= trial.params["noise_scale"] <= 0.1
        assert 0.1 <= trial.params["prior_variance"] <= 10.0
        assert trial.metrics["epoch"] == 2
        assert 0 < trial.metrics["test_accuracy"] <= 1
    best = min(outcome.trials, key=lambda t: t.metrics["val_nll"])
    assert outcome.best == [best]

    client, parents, children = runs_of(tracking_uri, spec.name)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_id == outcome.parent_run_id
    assert parent.data.metrics["best_val_nll"] == pytest.approx(best.metrics["val_nll"])
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "sweep_summary.json"} <= parent_files
    by_run = {t.mlflow_run_id: t for t in outcome.trials}
    for child in children:
        run_id = child.info.run_id
        assert child.data.tags[PARENT_RUN_TAG] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.tags[STATUS_TAG] == "succeeded"
        trial = by_run[run_id]
        assert float(child.data.params["noise_scale"]) == pytest.approx(trial.params["noise_scale"])
        history = client.get_metric_history(run_id, "val_nll")
        assert [m.step for m in history] == [1, 2]
        assert history[-1].value == pytest.approx(trial.metrics["val_nll"])
        for name in ("train_loss", "train_sqgrad", "val_accuracy", "val_ece", "test_brier"):
            assert name in child.data.metrics
        files = {a.path for a in client.list_artifacts(run_id)}
        assert {DIAGRAM_FILE, "reliability_bins.json", "final_metrics.json"} <= files
        diagram = ElementTree.parse(client.download_artifacts(run_id, DIAGRAM_FILE)).getroot()
        assert diagram.tag == "{http://www.w3.org/2000/svg}svg"
        with open(client.download_artifacts(run_id, "reliability_bins.json")) as handle:
            bins = json.load(handle)
        assert sum(bins["count"]) > 0

    # Runs a person can read: the parent by the sweep, each child by its number and method;
    # Tune's ids stay as tags.
    assert parent.info.run_name == "digits-small"
    names = sorted(child.info.run_name for child in children)
    assert names == [f"digits-small #{n} vl-uniform" for n in (1, 2, 3, 4)]
    assert all(
        child.data.tags[TRIAL_TAG] in {t.trial_id for t in outcome.trials} for child in children
    )
    # Every trial saw the same dataset, recorded as its input.
    for child in children:
        (dataset,) = client.get_run(child.info.run_id).inputs.dataset_inputs
        assert dataset.dataset.name == "digits" and dataset.dataset.source_type == "code"
        assert json.loads(dataset.dataset.profile)["n_classes"] == 10

    # Every trial logged its model; the best is registered under the sweep's name.
    assert outcome.registered_model == {
        "name": "digits-small",
        "version": "1",
        "uri": "models:/digits-small/1",
    }
    version = client.get_model_version("digits-small", "1")
    assert version.run_id == best.mlflow_run_id
    assert version.tags["gradreg.sweep"] == "digits-small"
    assert version.tags["objective"] == f"val_nll={best.metrics['val_nll']:.4g}"
    assert float(version.tags["metric.val_nll"]) == pytest.approx(best.metrics["val_nll"], rel=1e-5)
    assert "by val_nll (minimize)" in version.description
    for child in children:
        assert logged_model_uri(client, child.info.run_id) is not None
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model("models:/digits-small/1")
    probs = model.predict(np.zeros((2, 8, 8)), params={"mode": "mean"}).to_numpy()
    assert probs.shape == (2, 10) and np.allclose(probs.sum(axis=1), 1)

    # The hooks saw every trial start, report and finish; the progress line counted them.
    finished = [e for e in events if e.state == "succeeded"]
    assert sorted(e.trial_id for e in finished) == sorted(t.trial_id for t in outcome.trials)
    assert all(e.mlflow_run_id in by_run for e in finished)
    assert "trials 4/4 done, 0 running, 0 failed | best val_nll" in stream.getvalue()

    with pytest.raises(SweepExistsError, match="resume digits-small"):
        run_sweep(spec, driver_options)


def test_failing_trial_is_retried_then_recorded_as_failed(ray_local, driver_options, tracking_uri):
    # lr = 1e30 makes the first Adam step blow the weights up: the loss is NaN, every time.
    spec = digits_spec(
        parameters={"lr": {"type": "categorical", "choices": [0.003, 1.0e30]}},
        search={
            "algorithm": "random",
            "seed": 0,
            "initial_points": [{"lr": 1.0e30}, {"lr": 0.003}],
        },
        budget={"max_trials": 2, "max_concurrent_trials": 1},
        fault_tolerance={"max_retries_per_trial": 1, "checkpoint_every_epochs": 1},
        fixed={"epochs": 2, "batch_size": 256, "device": "cpu", "noise_scale": 0.01},
    )
    events: list[TrialEvent] = []

    outcome = run_sweep(spec, driver_options, on_trial=events.append)

    assert outcome.status == "succeeded"
    states = {t.params["lr"]: t for t in outcome.trials}
    assert states[1.0e30].state == "failed"
    assert "diverged" in states[1.0e30].error
    assert states[0.003].state == "succeeded"
    failed_id = states[1.0e30].trial_id
    assert [e.state for e in events if e.trial_id == failed_id and e.state != "running"] == [
        "retrying",
        "failed",
    ]
    _, _, children = runs_of(tracking_uri, spec.name)
    assert len(children) == 2  # the retry continued its run instead of opening another
    failed_run = next(c for c in children if c.data.params["lr"] == "1e+30")
    assert failed_run.info.status == "FAILED"
    assert failed_run.data.tags[ATTEMPT_TAG] == "2"
    assert failed_run.data.tags[STATUS_TAG] == "failed"
    assert "diverged" in failed_run.data.tags["gradreg.error"]
    # It still names its data, and has no model (it never finished).
    (dataset,) = failed_run.inputs.dataset_inputs
    assert dataset.dataset.name == "digits"
    client = MlflowClient(tracking_uri)
    assert logged_model_uri(client, failed_run.info.run_id) is None
    assert outcome.best[0].params["lr"] == 0.003


def test_multi_objective_returns_the_pareto_set(ray_local, driver_options):
    spec = digits_spec(
        name="digits-pareto",
        objectives=[{"metric": "val_nll"}, {"metric": "val_ece"}, {"metric": "val_accuracy"}],
        budget={"max_trials": 5, "max_concurrent_trials": 2},
        search={"algorithm": "nsga2", "seed": 1, "population_size": 4},
    )
    assert [o.goal for o in spec.objectives] == ["minimize", "minimize", "maximize"]

    outcome = run_sweep(spec, driver_options)

    assert outcome.status == "succeeded" and len(outcome.trials) == 5
    losses = {
        t.trial_id: (t.metrics["val_nll"], t.metrics["val_ece"], -t.metrics["val_accuracy"])
        for t in outcome.trials
    }

    def dominated(a: str) -> bool:
        return any(
            all(x <= y for x, y in zip(losses[b], losses[a], strict=True))
            and losses[b] != losses[a]
            for b in losses
        )

    pareto = {t.trial_id for t in outcome.best}
    assert pareto == {t for t in losses if not dominated(t)}
    assert pareto  # a finite set of points always has a non-dominated one


@pytest.mark.parametrize("entry", [run_sweep, resume_sweep])
def test_a_misspelt_hook_is_refused_before_anything_starts(entry, driver_options):
    first = digits_spec() if entry is run_sweep else "digits-small"
    with pytest.raises(
        TypeError, match=r"'on_trail'; its hooks are budget, on_start, on_trial, should"
    ):
        entry(first, driver_options, on_trail=print)


def test_best_trials_ignores_failed_and_non_finite():
    from sweeps import TrialSummary
    from sweeps.spec import Objective

    def trial(name, state, nll):
        return TrialSummary(name, name, state, {}, {"val_nll": nll}, None)

    trials = [
        trial("a", "failed", 0.1),
        trial("b", "succeeded", math.nan),
        trial("c", "stopped", 0.5),
        trial("d", "succeeded", 0.7),
    ]
    assert [t.name for t in best_trials([Objective(metric="val_nll")], trials)] == ["c"]
    assert best_trials([Objective(metric="val_nll")], trials[:2]) == []


def test_stop_flag_interrupts_and_resume_never_reruns_finished_trials(
    ray_local, driver_options, tracking_uri
):
    spec = serial_digits_spec("digits-resume", epochs=3, trials=3)
    finished: list[str] = []

    def on_trial(event: TrialEvent) -> None:
        if event.state == "succeeded":
            finished.append(event.trial_id)

    def stop_after_first_trial() -> bool:
        return bool(finished)

    first = run_sweep(
        spec,
        driver_options.__class__(**{**driver_options.__dict__, "stop_poll_s": 0.0}),
        on_trial=on_trial,
        should_stop=stop_after_first_trial,
    )
    assert first.status == "stopped"
    done_first = {t.trial_id: t for t in first.trials if t.state == "succeeded"}
    assert set(done_first) == set(finished) and len(done_first) >= 1
    client, parents, children = runs_of(tracking_uri, spec.name)
    assert parents[0].info.status == "KILLED"

    # A run the killed driver of a real deployment can leave: its trial never reached Tune's
    # saved state, so nothing will ever continue it.
    orphan = Tracker(tracking_uri).open_trial(
        first.experiment_id, first.parent_run_id, spec.name, "lost0001", "lost", {}
    )

    seen_after: list[TrialEvent] = []
    second = resume_sweep(spec.name, driver_options, on_trial=seen_after.append)

    assert second.status == "succeeded", [
        (t.name, t.state, t.metrics.get("epoch")) for t in second.trials
    ]
    assert len(second.trials) == 3
    assert len({t.trial_id for t in second.trials}) == 3
    for trial_id, before in done_first.items():
        after = next(t for t in second.trials if t.trial_id == trial_id)
        assert after.metrics == before.metrics  # kept, not re-run
        assert all(e.trial_id != trial_id for e in seen_after)
    client, parents, children = runs_of(tracking_uri, spec.name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    lost = next(c for c in children if c.info.run_id == orphan.run_id)
    assert lost.info.status == "KILLED" and lost.data.tags[STATUS_TAG] == "interrupted"
    assert lost.data.tags[ERROR_TAG] == LOST_TRIAL_RUN
    children = [c for c in children if c.info.run_id != orphan.run_id]
    assert len(children) == 3
    for child in children:
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "epoch")]
        assert steps == [1, 2, 3]  # every epoch logged exactly once, resumed or not
        if child.info.run_id in {t.mlflow_run_id for t in done_first.values()}:
            assert child.data.tags[ATTEMPT_TAG] == "1"


def test_asha_cuts_a_hopeless_trial_and_its_run_is_closed_with_a_diagram(
    ray_local, driver_options, tracking_uri
):
    # Trial 1 learns; trial 2 (lr 1e-7) cannot: ASHA stops it at the first rung.
    spec = digits_spec(
        name="digits-asha",
        fixed={"epochs": 4, "batch_size": 256, "device": "cpu", "noise_scale": 0.01},
        parameters={"lr": {"type": "float", "low": 1.0e-7, "high": 0.01, "scale": "log"}},
        search={"algorithm": "random", "seed": 0, "initial_points": [{"lr": 0.01}, {"lr": 1.0e-7}]},
        early_stopping={"kind": "asha", "grace_period": 1, "reduction_factor": 2},
        budget={"max_trials": 2, "max_concurrent_trials": 1},
    )
    outcome = run_sweep(spec, driver_options)

    by_lr = {t.params["lr"]: t for t in outcome.trials}
    assert by_lr[0.01].state == "succeeded" and by_lr[0.01].metrics["epoch"] == 4
    assert by_lr[1.0e-7].state == "stopped" and by_lr[1.0e-7].metrics["epoch"] < 4
    assert outcome.status == "succeeded"
    client, _, children = runs_of(tracking_uri, spec.name)
    cut = next(c for c in children if c.info.run_id == by_lr[1.0e-7].mlflow_run_id)
    assert cut.info.status == "FINISHED" and cut.data.tags[STATUS_TAG] == "stopped"
    assert DIAGRAM_FILE in {a.path for a in client.list_artifacts(cut.info.run_id)}


def test_a_stopped_trial_resumes_from_its_checkpoint(
    ray_local, driver_options, tracking_uri, tmp_path
):
    spec = digits_spec(
        name="digits-resumes",
        fixed={"epochs": 6, "batch_size": 256, "lr": 0.003, "device": "cpu"},
        budget={"max_trials": 1, "max_concurrent_trials": 1},
    )
    reached: list[int] = []
    first = run_sweep(
        spec,
        driver_options.__class__(**{**driver_options.__dict__, "stop_poll_s": 0.0}),
        on_trial=lambda event: reached.append(event.epoch or 0),
        should_stop=lambda: max(reached, default=0) >= 2,
    )
    (trial,) = first.trials
    assert first.status == "stopped" and trial.state == "interrupted"
    assert list((tmp_path / "tune" / spec.name).glob("*/checkpoint_*"))

    events: list[TrialEvent] = []
    second = resume_sweep(spec.name, driver_options, on_trial=events.append)
    (trial,) = second.trials
    assert (second.status, trial.state, trial.error) == ("succeeded", "succeeded", None)
    assert 1 not in {e.epoch for e in events}  # it went on from a checkpoint, not from epoch 1
    client, _, (child,) = runs_of(tracking_uri, spec.name)
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "epoch")]
    assert steps == [1, 2, 3, 4, 5, 6]
    # Tune's results file, uploaded at every save of its state, holds the latest result only;
    # what Tune resumes from is on storage.
    analysis = ExperimentAnalysis(second.experiment_path)
    (frame,) = analysis.trial_dataframes.values()
    assert list(frame["epoch"]) == [6]
    (saved,) = analysis.trials
    # Finished, it is never resumed: its saved state names no checkpoint (issue 29), and its
    # last one stays on storage.
    assert saved.run_metadata.checkpoint_manager.latest_checkpoint_result is None
    newest = max(Path(saved.path).glob("checkpoint_*"))
    assert newest.name == "checkpoint_000005" and (newest / "state.pt").is_file()


def test_a_trial_the_cluster_cannot_place_fails_the_sweep_saying_why(
    ray_local, driver_options, monkeypatch
):
    monkeypatch.setenv("GRADREG_PLACEMENT_TIMEOUT_S", "3")
    spec = digits_spec(
        name="digits-unplaceable",
        resources={"cpu": 3},  # within the deployment's cap, beyond this 2-CPU cluster
        budget={"max_trials": 2, "max_concurrent_trials": 1},
    )
    started = time.monotonic()
    outcome = run_sweep(spec, driver_options)
    assert outcome.status == "failed"
    assert "nothing could run it" in outcome.reason and "lower resources.cpu/gpu" in outcome.reason
    assert time.monotonic() - started < 60  # not waiting for ever
