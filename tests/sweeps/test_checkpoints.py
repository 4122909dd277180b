"""The pruner never deletes a checkpoint that the last saved experiment state names."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow.fs
from ray import tune

from sweeps.checkpoints import CheckpointPruner, delete_older_checkpoints

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
