"""Delete a trial's old checkpoints only once no saved experiment state can name them.

Tune's own `CheckpointConfig(num_to_keep=...)` deletes a trial's older checkpoints as soon as
it registers a newer one, but it saves the experiment state, which names the checkpoint each
trial resumes from, only every 10 s or more. A driver killed in between leaves a state that
names a deleted checkpoint, and Tune then fails that trial on resume ("Could not recover from
checkpoint as it does not exist on storage anymore").

`CheckpointPruner` keeps that window closed. Tune calls a callback's `get_state` while it saves
the experiment state; at each save the pruner deletes the checkpoints older than the ones the
*previous* save named. A save written to remote storage in the background has had a whole save
period to get there before anything it does not name goes.
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow.fs
from ray import tune
from ray.train._internal.storage import get_fs_and_path
from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
from ray.tune.search.search_generator import SearchGenerator

CHECKPOINT_PREFIX = "checkpoint_"


@dataclass(frozen=True)
class _Named:
    filesystem: pyarrow.fs.FileSystem
    trial_dir: str
    index: int


class CheckpointPruner(tune.Callback):
    def __init__(self) -> None:
        self._latest: dict[str, _Named] = {}
        self._named_by_last_save: dict[str, _Named] = {}
        # What was pruned already: a trial with no newer checkpoint costs no listing, so a
        # save's work follows the trials that checkpointed, not every trial of the sweep.
        self._pruned: dict[str, _Named] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Tune pickles its callbacks into the experiment state: a sweep saved before
        # `_pruned` existed resumes with a pruner that lacks it.
        self.__dict__.update(state)
        self.__dict__.setdefault("_pruned", {})

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        named = _named(checkpoint)
        if named is not None:
            self._latest[trial.trial_id] = named

    def get_state(self) -> dict[str, Any] | None:
        # Called while Tune saves the experiment state: this save names self._latest.
        for trial_id, named in self._named_by_last_save.items():
            if self._pruned.get(trial_id) != named:
                delete_older_checkpoints(named.filesystem, named.trial_dir, named.index)
                self._pruned[trial_id] = named
        self._named_by_last_save = dict(self._latest)
        return None  # nothing to restore: a resumed driver starts counting afresh


def delete_older_checkpoints(
    filesystem: pyarrow.fs.FileSystem, trial_dir: str, index: int
) -> list[str]:
    """Delete the trial's checkpoint directories numbered below ``index``; return their paths."""
    selector = pyarrow.fs.FileSelector(trial_dir, allow_not_found=True)
    older = [
        entry.path
        for entry in filesystem.get_file_info(selector)
        if entry.type == pyarrow.fs.FileType.Directory
        and (number := _index(entry.base_name)) is not None
        and number < index
    ]
    for path in older:
        filesystem.delete_dir(path)
    return older


def _named(checkpoint: tune.Checkpoint) -> _Named | None:
    path = checkpoint.path.rstrip("/")
    index = _index(posixpath.basename(path))
    if index is None:
        return None
    return _Named(checkpoint.filesystem, posixpath.dirname(path), index)


def _index(name: str) -> int | None:
    suffix = name.removeprefix(CHECKPOINT_PREFIX)
    return int(suffix) if name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


# Tune's experiment-state save is O(trials): every trial's state, the whole pickled study, the
# staging directory copied to storage. Measured (benchmarks/sweep_scale.py, BENCHMARKS.md) at
# 0.15 s for 1,000 trials and 1.7 s for 10,000 here: saved every second, that is 13% and 62%
# of the driver's loop. Tune's own "auto" period keeps saves to 5% of the loop, but never more
# often than every 10 s, which makes a small sweep's resume redo up to 10 s of work.
MIN_STATE_SAVE_PERIOD_S = 1.0
STATE_SAVE_SHARE = 0.05


@contextmanager
def adaptive_state_saves(min_period_s: float = MIN_STATE_SAVE_PERIOD_S) -> Iterator[None]:
    """While a sweep runs with ``TUNE_GLOBAL_CHECKPOINT_S=auto``: save the experiment state
    every ``min_period_s``, or less often once a save takes more than 5% of that."""
    original = _ExperimentCheckpointManager._update_auto_checkpoint_time

    def update(self: _ExperimentCheckpointManager, time_taken: float) -> None:
        if self._auto_checkpoint_enabled:
            self._checkpoint_period = max(min_period_s, time_taken / STATE_SAVE_SHARE)

    _ExperimentCheckpointManager._update_auto_checkpoint_time = update
    try:
        yield
    finally:
        _ExperimentCheckpointManager._update_auto_checkpoint_time = original


@contextmanager
def searcher_follows_moved_experiment(path: str) -> Iterator[None]:
    """While a sweep resumes from ``path``: trials the searcher creates are stored there too.

    Tune re-points every restored trial at the experiment's new place when a sweep resumes
    from a moved directory (another disk, another bucket prefix, a new head). But a trial the
    searcher creates after the resume takes the storage saved with the searcher's state (Ray
    2.60: `SearchGenerator.set_state` brings back the pickled `Experiment`, old path and all),
    and then fails ("Unable to set up cluster storage") or writes to the old place.
    """
    storage, _ = path.rstrip("/").rsplit("/", 1)
    filesystem, fs_path = get_fs_and_path(storage, None)
    original = SearchGenerator.set_state

    def set_state(self: SearchGenerator, state: dict) -> None:
        original(self, state)
        experiment = self._experiment
        moved = copy.copy(experiment.storage)
        moved.storage_filesystem, moved.storage_fs_path = filesystem, fs_path
        experiment.storage = experiment.spec["storage"] = moved  # new trials take the spec's

    SearchGenerator.set_state = set_state
    try:
        yield
    finally:
        SearchGenerator.set_state = original
