"""A trial's process killed after a report: every epoch it reported with a checkpoint is in
MLflow, and its retry logs each later epoch once (issue 29)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from mlflow import MlflowClient

from sweeps import TrialEvent, run_sweep
from sweeps.tracking import RESUMED_TAG
from tests.helpers.specs import serial_digits_spec

TRIAL_PROCESS = b"ray::ImplicitFunc"  # the title Ray gives a Tune function trainable's actor


def trial_processes() -> list[int]:
    """The pids of this machine's Tune trial actors (by process title)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone since the listing
        if title.startswith(TRIAL_PROCESS):
            found.append(int(entry.name))
    return found


def test_a_trial_killed_after_a_report_keeps_its_epochs_and_logs_each_once(
    ray_local, driver_options, tracking_uri
):
    spec = serial_digits_spec(
        "digits-killed",
        epochs=4,
        trials=1,
        fault_tolerance={"max_retries_per_trial": 1, "checkpoint_every_epochs": 1},
        ensemble={"size": 0},
    )
    killed: list[int] = []
    seen: list[TrialEvent] = []
    client = MlflowClient(tracking_uri)
    in_mlflow_at_kill: list[int] = []

    def kill_after_second_epoch(event: TrialEvent) -> None:
        seen.append(event)
        if event.state == "running" and event.epoch == 2 and not killed:
            pids = trial_processes()
            assert len(pids) == 1, pids  # the one trial of this test
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
            history = client.get_metric_history(event.mlflow_run_id, "epoch")
            in_mlflow_at_kill.extend(sorted(m.step for m in history))

    outcome = run_sweep(spec, driver_options, on_trial=kill_after_second_epoch)

    assert killed, "the trial never reported its second epoch"
    assert "retrying" in [e.state for e in seen]  # the kill did end that attempt
    (trial,) = outcome.trials
    assert trial.state == "succeeded"
    # Each epoch reported with a checkpoint was in MLflow before its report reached Tune.
    assert in_mlflow_at_kill == [1, 2]
    run = client.get_run(trial.mlflow_run_id)
    # The retry started from a checkpoint (epoch 1: Tune had not yet registered epoch 2's when
    # the driver saw its report) and ran epoch 2 again without logging it twice.
    assert int(run.data.tags[RESUMED_TAG]) in (1, 2)
    for metric in ("epoch", "val_nll", "train_loss"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
        assert sorted(steps) == [1, 2, 3, 4], (metric, steps)
    assert run.info.status == "FINISHED"
