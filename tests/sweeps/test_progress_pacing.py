"""How often a trial reports to Tune (`tracking.progress_interval_s`), and how often it writes
its epochs to MLflow: at most every interval, on an injected clock, and every epoch reaches
MLflow whatever the pace."""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient

from sweeps import TrialEvent, run_sweep
from sweeps.tracking import ROLE_TAG
from sweeps.trainable import EpochLog, Pacer
from tests.helpers.specs import serial_digits_spec


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_pacer_is_due_once_per_interval_from_when_it_last_was() -> None:
    clock = Clock()
    pacer = Pacer(2.0, clock)
    seen = []
    for now in (100.5, 101.9, 102.0, 102.1, 103.9, 104.0, 104.5):
        clock.now = now
        seen.append(pacer.due())
    assert seen == [False, False, True, False, False, True, False]
    clock.now = 105.0
    pacer.restart()  # a report made for another reason
    clock.now = 106.5
    assert not pacer.due()
    clock.now = 107.0
    assert pacer.due()
    assert all(Pacer(0.0, clock).due() for _ in range(3))


class Tracker:
    def __init__(self) -> None:
        self.writes: list[list[int]] = []

    def log_epochs(self, run_id: str, epochs: list[tuple[int, dict[str, float]]]) -> None:
        self.writes.append([epoch for epoch, _ in epochs])


def test_epochs_reach_mlflow_in_batches_at_most_every_interval() -> None:
    clock, tracker = Clock(), Tracker()
    log = EpochLog(tracker, "run", interval_s=2.0, clock=clock)  # type: ignore[arg-type]
    for epoch, now in enumerate((100.5, 101.0, 102.0, 102.5, 103.0, 104.2), start=1):
        clock.now = now
        log.add(epoch, {"loss": 1.0 / epoch})
    assert tracker.writes == [[1, 2, 3], [4, 5, 6]]
    clock.now = 104.5
    log.add(7, {"loss": 0.1})
    log.flush()  # before a checkpoint, and at the end
    log.flush()  # nothing left: no write
    assert tracker.writes == [[1, 2, 3], [4, 5, 6], [7]]


def _epochs_reported(events: list[TrialEvent]) -> dict[str, list[int]]:
    reported: dict[str, list[int]] = {}
    for event in events:
        if event.state == "running" and event.metrics:
            reported.setdefault(event.trial_id, []).append(event.epoch)
    return reported


def _mlflow_epochs(tracking_uri: str, experiment: str) -> list[list[int]]:
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    trials = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    return [[m.step for m in client.get_metric_history(r.info.run_id, "val_nll")] for r in trials]


def _sweep(name: str, interval_s: float, **changes: Any):
    return serial_digits_spec(
        name,
        epochs=4,
        trials=2,
        fault_tolerance={"max_retries_per_trial": 0, "checkpoint_every_epochs": 4},
        tracking={"progress_interval_s": interval_s},
        **changes,
    )


def test_between_checkpoints_a_trial_reports_at_its_pace_and_mlflow_gets_every_epoch(
    ray_local, driver_options, tracking_uri
):
    # An hour between reports: only the checkpoint at the last epoch reaches Tune.
    paced = _sweep("digits-paced", 3600.0)
    events: list[TrialEvent] = []
    outcome = run_sweep(paced, driver_options, on_trial=events.append)
    assert outcome.status == "succeeded" and len(outcome.trials) == 2
    assert sorted(_epochs_reported(events).values()) == [[4], [4]]
    assert _mlflow_epochs(tracking_uri, paced.name) == [[1, 2, 3, 4]] * 2

    # 0: every epoch, as before the setting.
    every = _sweep("digits-every-epoch", 0.0)
    events = []
    assert run_sweep(every, driver_options, on_trial=events.append).status == "succeeded"
    assert sorted(_epochs_reported(events).values()) == [[1, 2, 3, 4]] * 2
    assert _mlflow_epochs(tracking_uri, every.name) == [[1, 2, 3, 4]] * 2


def test_early_stopping_sees_every_epoch_whatever_the_pace(ray_local, driver_options, tracking_uri):
    spec = _sweep(
        "digits-paced-asha",
        3600.0,
        early_stopping={"kind": "asha", "grace_period": 1, "reduction_factor": 2},
    )
    events: list[TrialEvent] = []
    run_sweep(spec, driver_options, on_trial=events.append)
    reported = _epochs_reported(events)
    assert reported and all(
        epochs == list(range(1, len(epochs) + 1)) for epochs in reported.values()
    )
    assert any(len(epochs) > 1 for epochs in reported.values())
