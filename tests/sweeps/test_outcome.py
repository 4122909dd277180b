"""How a sweep's status and reason follow from its trials' results."""

from __future__ import annotations

from types import SimpleNamespace

from sweeps.outcome import sweep_outcome
from sweeps.records import SweepRecord
from tests.helpers.specs import digits_spec

STORAGE_ERROR = (
    "CheckpointStorageError: could not save epoch 2's checkpoint to Tune's storage: When "
    "uploading part for key 'tune/s/t1/checkpoint_000001/state.pt' in bucket 'gradreg': "
    "AWS Error NETWORK_CONNECTION during UploadPart operation: Couldn't connect to server"
)


def result(name: str, epoch: int, error: str | None = None) -> SimpleNamespace:
    metrics = {"trial_id": name, "epoch": epoch, "val_nll": 0.5}
    return SimpleNamespace(metrics=metrics, config={}, path=f"/storage/sweep/{name}", error=error)


def outcome(*results: SimpleNamespace):
    spec = digits_spec(budget={"max_trials": 2, "max_concurrent_trials": 2})
    record = SweepRecord(spec.name, spec.to_document(), "sqlite://", "1", "parent", None)
    return sweep_outcome(
        spec, record, "/storage/sweep", results, {}, stop_requested=False, failed_too_often=False
    )


def test_a_failed_sweep_says_what_broke_in_its_first_failed_trials_words():
    failed = outcome(result("t1", 1, STORAGE_ERROR), result("t2", 1, "OSError: disk full"))

    assert failed.status == "failed"
    assert failed.reason.startswith("every trial failed; the first failure (t1): ")
    assert "Tune's storage" in failed.reason and "bucket 'gradreg'" in failed.reason


def test_a_sweep_that_succeeded_despite_a_failure_keeps_its_plain_reason():
    epochs = digits_spec().fixed["epochs"]
    done = outcome(result("t1", 1, STORAGE_ERROR), result("t2", epochs))

    assert done.status == "succeeded"
    assert done.reason == "1 of 2 trials finished"
