"""The pruner never deletes a checkpoint that the last saved experiment state names."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow.fs
import pytest
from ray import tune

from sweeps.checkpoints import (
    MIN_STATE_SAVE_PERIOD_S,
    CheckpointPruner,
    adaptive_state_saves,
    delete_older_checkpoints,
)

LOCAL = pyarrow.fs.LocalFileSystem()


def left(trial_dir) -> list[str]:
    return sorted(p.name for p in trial_dir.iterdir())


def test_checkpoints_go_one_save_after_the_save_that_stopped_naming_them(tmp_path):
    trials = {name: tmp_path / name for name in ("a", "b")}
    pruner = CheckpointPruner()

    def checkpoint(name: str, index: int) -> None:
        path = trials[name] / f"checkpoint_{index:06d}"
        path.mkdir(parents=True)
        trial = SimpleNamespace(trial_id=name)
        pruner.on_checkpoint(0, [], trial, tune.Checkpoint(str(path), filesystem=LOCAL))

    def save() -> None:
        assert pruner.get_state() is None  # nothing of its own to restore

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
        trial = SimpleNamespace(trial_id=name)
        pruner.on_checkpoint(0, [], trial, tune.Checkpoint(str(path), filesystem=LOCAL))
    pruner.get_state()
    pruner.get_state()  # prunes below what the first save named: each trial once
    assert sorted(listed) == ["a", "b", "c"]
    path = tmp_path / "b" / "checkpoint_000001"
    path.mkdir()
    pruner.on_checkpoint(
        0, [], SimpleNamespace(trial_id="b"), tune.Checkpoint(str(path), filesystem=LOCAL)
    )
    listed.clear()
    for _ in range(3):
        pruner.get_state()
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
    del old._pruned  # the attribute this version added
    pruner = pickle.loads(pickle.dumps(old))
    trial_dir = tmp_path / "a"
    for index in (0, 1):
        path = trial_dir / f"checkpoint_{index:06d}"
        path.mkdir(parents=True)
        checkpoint = tune.Checkpoint(str(path), filesystem=LOCAL)
        pruner.on_checkpoint(0, [], SimpleNamespace(trial_id="a"), checkpoint)
        pruner.get_state()
    pruner.get_state()
    assert left(trial_dir) == ["checkpoint_000001"]
