"""Tune keeps only what it reads of a trial's reports; the store, MLflow and the outcome still
get all of them, on a resume too (issue 29)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ray import cloudpickle

from sweeps import TrialEvent, resume_sweep, run_sweep
from sweeps.records import BINS_KEY, PLACEMENT_KEY, RUN_ID_KEY
from sweeps.spec.resolve import tune_metrics
from sweeps.statefiles import REPORTS_DIR
from sweeps.tune_results import trim
from tests.helpers.specs import digits_spec, serial_digits_spec

# What a trial reports that Tune does not read (the objective is val_nll, no early stopping).
NOT_FOR_TUNE = ("val_ece", "test_nll", "train_loss", RUN_ID_KEY, BINS_KEY, PLACEMENT_KEY)


def test_trim_keeps_tunes_keys_and_the_kept_metrics():
    report = {
        "epoch": 3,
        "val_nll": 0.5,
        "val_ece": 0.02,
        "posterior_std_mean": 0.1,
        RUN_ID_KEY: "abc",
        BINS_KEY: {"count": [1, 2]},
        PLACEMENT_KEY: {"node_ip": "10.0.0.1"},
        "training_iteration": 3,
        "time_total_s": 1.5,
        "config": {"noise_scale": 0.01},
        "trial_id": "t1",
    }
    trim(report, {"epoch", "val_nll"})
    assert report == {
        "epoch": 3,
        "val_nll": 0.5,
        "training_iteration": 3,
        "time_total_s": 1.5,
        "config": {"noise_scale": 0.01},
        "trial_id": "t1",
    }


def test_tune_metrics_are_the_objectives_the_stopping_metric_and_the_epoch():
    assert tune_metrics(digits_spec()) == {"epoch", "val_nll"}
    spec = digits_spec(
        objectives=[{"metric": "val_nll"}, {"metric": "val_ece"}],
        early_stopping={"kind": "asha", "metric": "val_accuracy", "grace_period": 1},
    )
    assert tune_metrics(spec) == {"epoch", "val_nll", "val_ece", "val_accuracy"}


def unpickled(field: dict[str, str]) -> Any:
    """An object Tune wrote into its state as a hex-encoded pickle."""
    assert field["_type"] == "CLOUDPICKLE_FALLBACK"
    return cloudpickle.loads(bytes.fromhex(field["value"]))


def saved_trials(experiment: Path) -> dict[str, tuple[dict, dict]]:
    """Each trial's entry in Tune's last saved experiment state: its record and run metadata."""
    state = max(experiment.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    entries = json.loads(state.read_text())["trial_data"]
    trials = {}
    for record, metadata in entries:
        record = json.loads(record)
        trials[record["trial_id"]] = (record, json.loads(metadata))
    return trials


def test_tune_keeps_a_part_and_everyone_else_gets_the_whole_report(
    ray_local, driver_options, tracking_uri
):
    spec = serial_digits_spec("digits-trimmed", epochs=3, trials=2)
    events: list[TrialEvent] = []
    outcome = run_sweep(spec, driver_options, on_trial=events.append)
    assert outcome.status == "succeeded"
    experiment = Path(driver_options.storage_path, spec.name)

    saved = saved_trials(experiment)
    assert set(saved) == {t.trial_id for t in outcome.trials}
    params = {t.trial_id: t.params for t in outcome.trials}
    assert all(set(p) == {"noise_scale", "prior_variance"} for p in params.values())
    for trial_id, (record, metadata) in saved.items():
        text = json.dumps(metadata)
        for key in NOT_FOR_TUNE:
            assert f'"{key}"' not in text, key  # not in the last result, analysis or checkpoints
        # A finished trial keeps of its last report the metrics Tune reads, which trial it was
        # with its parameters, and an analysis of those metrics only; no windows.
        last = metadata["last_result"]
        assert set(last) == {"epoch", "val_nll", "done", "training_iteration", "trial_id", "config"}
        assert (last["epoch"], last["training_iteration"], last["trial_id"]) == (3, 3, trial_id)
        assert last["config"] == record["config"] == params[trial_id]
        assert set(metadata["metric_analysis"]) == {"epoch", "val_nll"}
        assert metadata["metric_analysis"]["epoch"]["max"] == 3
        assert metadata["metric_n_steps"] == {}
        # Neither its checkpoint's record (Tune never restarts it), nor the functions that
        # named it, nor its storage's syncer; its names and paths stay.
        bookkeeping = unpickled(metadata["checkpoint_manager"])
        assert bookkeeping.latest_checkpoint_result is None
        assert bookkeeping.best_checkpoint_results == []
        assert record["trial_name_creator"] is None and record["trial_dirname_creator"] is None
        names = {t.trial_id: t.name for t in outcome.trials}
        assert record["custom_trial_name"] == record["custom_dirname"] == names[trial_id]
        storage = unpickled(record["storage"])
        assert storage.syncer is None and storage.trial_dir_name == names[trial_id]
    # Each trial's entry in the state file, as compact JSON (Tune indents it): 3.9 KB here, with
    # long temporary paths. Before issue 29's compaction 8.5 KB; over 30 KB with every report
    # and checkpoint record whole.
    state = max(experiment.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    for entry in json.loads(state.read_text())["trial_data"]:
        assert all("\n" not in part for part in entry)
        assert len(json.dumps(entry)) < 4_300

    for trial in outcome.trials:
        assert trial.state == "succeeded"
        assert {"val_ece", "test_nll", "train_loss", "val_nll"} <= set(trial.metrics)
        assert trial.mlflow_run_id is not None
        # The hook saw every epoch's whole report as it came, not the one before it.
        running = [e for e in events if e.trial_id == trial.trial_id and e.state == "running"]
        reported = [e for e in running if e.metrics]
        assert [e.epoch for e in reported] == [1, 2, 3]
        assert all("val_ece" in e.metrics and e.placement for e in reported)
        kept = json.loads((experiment / REPORTS_DIR / f"{trial.trial_id}.json").read_text())
        assert kept == {**trial.metrics, RUN_ID_KEY: trial.mlflow_run_id}

    # A resumed driver has only Tune's part in memory; the trials' reports come from their files.
    resumed = resume_sweep(spec.name, driver_options)
    assert {t.trial_id: t.metrics for t in resumed.trials} == {
        t.trial_id: t.metrics for t in outcome.trials
    }
    assert {t.trial_id: t.params for t in resumed.trials} == params
    assert [t.state for t in resumed.trials] == ["succeeded", "succeeded"]
    shutil.rmtree(experiment / REPORTS_DIR)
    without = resume_sweep(spec.name, driver_options)
    for trial in without.trials:
        assert set(trial.metrics) == {"epoch", "val_nll"}
        assert trial.mlflow_run_id is None
