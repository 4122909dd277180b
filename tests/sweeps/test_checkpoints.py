"""The pruner never deletes a checkpoint that the last saved experiment state names."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pyarrow.fs
import pytest
from ray import tune
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult

from sweeps.checkpoints import (
    MIN_STATE_SAVE_PERIOD_S,
    CheckpointPruner,
    adaptive_state_saves,
    delete_older_checkpoints,
    deletions_finished,
)

LOCAL = pyarrow.fs.LocalFileSystem()


def left(trial_dir) -> list[str]:
    return sorted(p.name for p in trial_dir.iterdir())


def tune_trial(name: str) -> SimpleNamespace:
    """What the pruner reads of Tune's `Trial`, with Tune's own checkpoint bookkeeping."""
    return SimpleNamespace(
        trial_id=name, run_metadata=SimpleNamespace(checkpoint_manager=_CheckpointManager(None))
    )


def register(pruner: CheckpointPruner, trial: SimpleNamespace, path) -> None:
    """A checkpoint reported, as Tune's controller handles it: its bookkeeping, then callbacks."""
    checkpoint = tune.Checkpoint(str(path), filesystem=LOCAL)
    result = _TrainingResult(checkpoint=checkpoint, metrics={"epoch": path.name})
    trial.run_metadata.checkpoint_manager.register_checkpoint(result)
    pruner.on_checkpoint(0, [], trial, checkpoint)


def save(pruner: CheckpointPruner) -> None:
    """A save of Tune's state, and the deletions it asked for, done."""
    assert pruner.get_state() is None
    assert pruner.wait(10)


def booked(trial: SimpleNamespace) -> list[str]:
    manager = trial.run_metadata.checkpoint_manager
    return [r.checkpoint.path.rsplit("/", 1)[-1] for r in manager.best_checkpoint_results]


def test_checkpoints_go_one_save_after_the_save_that_stopped_naming_them(tmp_path):
    trials = {name: tmp_path / name for name in ("a", "b")}
    tune_trials = {name: tune_trial(name) for name in trials}
    pruner = CheckpointPruner()

    def checkpoint(name: str, index: int) -> None:
        path = trials[name] / f"checkpoint_{index:06d}"
        path.mkdir(parents=True)
        register(pruner, tune_trials[name], path)

    def save() -> None:
        assert pruner.get_state() is None  # nothing of its own to restore
        assert pruner.wait(10)

    checkpoint("a", 0)
    save()  # names a/0
    checkpoint("a", 1)
    checkpoint("a", 2)
    checkpoint("b", 0)
    save()  # names a/2, b/0; a driver killed now resumes a from 0 or 2: both are kept
    assert left(trials["a"]) == ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]
    checkpoint("a", 3)
    checkpoint("b", 1)
    save()  # names a/3, b/1; the save before named a/2 and b/0, so older ones can go
    assert left(trials["a"]) == ["checkpoint_000002", "checkpoint_000003"]
    assert left(trials["b"]) == ["checkpoint_000000", "checkpoint_000001"]
    save()
    assert left(trials["a"]) == ["checkpoint_000003"]
    assert left(trials["b"]) == ["checkpoint_000001"]
    # Tune's bookkeeping, which every save writes, names only what is left.
    assert booked(tune_trials["a"]) == ["checkpoint_000003"]
    assert booked(tune_trials["b"]) == ["checkpoint_000001"]


def test_tune_forgets_the_checkpoints_the_pruner_deleted_and_keeps_the_latest(tmp_path):
    """A trial's part of Tune's saved state stays the same size however many epochs it ran."""
    trial = tune_trial("a")
    pruner = CheckpointPruner()
    for index in range(50):
        path = tmp_path / "a" / f"checkpoint_{index:06d}"
        path.mkdir(parents=True)
        register(pruner, trial, path)
        save(pruner)
        assert len(booked(trial)) <= 2  # the latest, and what the last save named
    manager = trial.run_metadata.checkpoint_manager
    assert booked(trial)[-1] == "checkpoint_000049"
    assert manager.latest_checkpoint_result.checkpoint.path.endswith("checkpoint_000049")
    assert left(tmp_path / "a") == booked(trial)  # what Tune lists is what is on storage


def test_only_numbered_checkpoint_directories_below_the_index_are_deleted(tmp_path):
    for name in ("checkpoint_000001", "checkpoint_000004", "checkpoint_000009", "checkpoint_x"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint_000002").write_text("a file")
    (tmp_path / "result.json").write_text("{}")
    deleted = delete_older_checkpoints(LOCAL, str(tmp_path), 5)
    assert sorted(deleted) == [
        str(tmp_path / "checkpoint_000001"),
        str(tmp_path / "checkpoint_000004"),
    ]
    assert left(tmp_path) == [
        "checkpoint_000002",
        "checkpoint_000009",
        "checkpoint_x",
        "result.json",
    ]
    assert delete_older_checkpoints(LOCAL, str(tmp_path / "gone"), 5) == []


def test_a_save_lists_only_the_trials_with_a_newer_checkpoint(tmp_path, monkeypatch):
    """A sweep of thousands of trials: each save must not list every trial directory again."""
    listed: list[str] = []
    real = delete_older_checkpoints

    def counting(filesystem, trial_dir, index):
        listed.append(trial_dir.rsplit("/", 1)[-1])
        return real(filesystem, trial_dir, index)

    monkeypatch.setattr("sweeps.checkpoints.delete_older_checkpoints", counting)
    pruner = CheckpointPruner()
    for name in ("a", "b", "c"):
        path = tmp_path / name / "checkpoint_000000"
        path.mkdir(parents=True)
        register(pruner, tune_trial(name), path)
    save(pruner)
    save(pruner)  # prunes below what the first save named: each trial once
    assert sorted(listed) == ["a", "b", "c"]
    path = tmp_path / "b" / "checkpoint_000001"
    path.mkdir()
    register(pruner, tune_trial("b"), path)
    listed.clear()
    for _ in range(3):
        save(pruner)
    assert listed == ["b"]  # the finished a and c are never listed again
    assert left(tmp_path / "b") == ["checkpoint_000001"]


def test_state_saves_come_every_second_until_they_would_take_over_5_percent():
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    manager = SimpleNamespace(_auto_checkpoint_enabled=True, _checkpoint_period=10.0)
    update = _ExperimentCheckpointManager._update_auto_checkpoint_time
    with adaptive_state_saves():
        _ExperimentCheckpointManager._update_auto_checkpoint_time(manager, 0.02)
        assert manager._checkpoint_period == MIN_STATE_SAVE_PERIOD_S == 1.0
        _ExperimentCheckpointManager._update_auto_checkpoint_time(manager, 0.5)  # 2,000 trials
        assert manager._checkpoint_period == pytest.approx(10.0)  # 0.5 s of every 10.5 s
    assert _ExperimentCheckpointManager._update_auto_checkpoint_time is update  # restored
    fixed = SimpleNamespace(_auto_checkpoint_enabled=False, _checkpoint_period=5.0)
    with adaptive_state_saves():  # a period the operator set stays theirs
        _ExperimentCheckpointManager._update_auto_checkpoint_time(fixed, 3.0)
    assert fixed._checkpoint_period == 5.0


def test_a_pruner_pickled_before_it_kept_what_it_pruned_still_prunes(tmp_path):
    """Tune pickles callbacks into a sweep's saved state; an older pruner comes back as it was."""
    import pickle

    old = CheckpointPruner()
    del old._pruned, old._bookkeeping  # the attributes later versions added
    pruner = pickle.loads(pickle.dumps(old))
    trial_dir = tmp_path / "a"
    trial = tune_trial("a")
    for index in (0, 1):
        path = trial_dir / f"checkpoint_{index:06d}"
        path.mkdir(parents=True)
        register(pruner, trial, path)
        save(pruner)
    save(pruner)
    assert left(trial_dir) == booked(trial) == ["checkpoint_000001"]
    # The trials' live bookkeeping is not pickled with the pruner.
    assert pruner._bookkeeping and pickle.loads(pickle.dumps(pruner))._bookkeeping == {}


def test_deletions_never_hold_up_a_save_and_the_run_waits_for_them(tmp_path, monkeypatch):
    """On S3, deleting in Tune's loop made each save slower, and the save period with it."""
    release = threading.Event()
    deleting = threading.Event()
    real = delete_older_checkpoints

    def slow(filesystem, trial_dir, index):
        deleting.set()
        release.wait(10)
        return real(filesystem, trial_dir, index)

    monkeypatch.setattr("sweeps.checkpoints.delete_older_checkpoints", slow)
    pruner = CheckpointPruner()
    trial = tune_trial("a")
    with deletions_finished(timeout_s=10):
        for index in (0, 1):
            path = tmp_path / "a" / f"checkpoint_{index:06d}"
            path.mkdir(parents=True)
            register(pruner, trial, path)
            started = time.monotonic()
            pruner.get_state()
            assert time.monotonic() - started < 1
        pruner.get_state()  # asks for checkpoint_000000 to go
        assert deleting.wait(10)
        assert not pruner.wait(0.1)  # still deleting, while Tune's loop went on
        assert booked(trial) == ["checkpoint_000001"]  # Tune forgot it at once
        threading.Timer(0.3, release.set).start()
    assert left(tmp_path / "a") == ["checkpoint_000001"]  # the run's end waited for it


def test_a_deletion_that_fails_is_said_and_the_next_still_runs(tmp_path, monkeypatch, caplog):
    calls: list[str] = []

    def failing(filesystem, trial_dir, index):
        calls.append(trial_dir)
        if trial_dir.endswith("a"):
            raise OSError("bucket 'gradreg' unreachable")
        return delete_older_checkpoints(filesystem, trial_dir, index)

    monkeypatch.setattr("sweeps.checkpoints.delete_older_checkpoints", failing)
    pruner = CheckpointPruner()
    for name in ("a", "b"):
        for index in (0, 1):
            path = tmp_path / name / f"checkpoint_{index:06d}"
            path.mkdir(parents=True)
            register(pruner, tune_trial(name), path)
        save(pruner)
    save(pruner)
    assert sorted(c.rsplit("/", 1)[-1] for c in calls) == ["a", "b"]
    assert left(tmp_path / "b") == ["checkpoint_000001"]
    assert left(tmp_path / "a") == ["checkpoint_000000", "checkpoint_000001"]
    (warning,) = [r for r in caplog.records if r.name == "sweeps.checkpoints"]
    assert "below 1" in warning.getMessage() and "unreachable" in warning.getMessage()
