"""Delete a trial's old checkpoints only once no saved experiment state can name them.

Tune's own `CheckpointConfig(num_to_keep=...)` deletes a trial's older checkpoints as soon as
it registers a newer one, but it saves the experiment state, which names the checkpoint each
trial resumes from, only every 10 s or more. A driver killed in between leaves a state that
names a deleted checkpoint, and Tune then fails that trial on resume ("Could not recover from
checkpoint as it does not exist on storage anymore").

`CheckpointPruner` keeps that window closed. Tune calls a callback's `get_state` while it saves
the experiment state; at each save the pruner deletes the checkpoints older than the ones the
*previous* save named. A save written to remote storage in the background has had a whole save
period to get there before anything it does not name goes. (Tune skips a save's upload while
the last one still runs: an upload slower than the period would leave that window open. Not
seen here; nothing checks for it.)

The deletions run on a thread of the pruner's own, never in Tune's loop. In the loop their
time counted as the save's, and the save period grows with a save's time
(`adaptive_state_saves`): on S3, with a checkpoint every epoch, saves came 1, 3, 6, 25, 58 and
186 s apart as each one had more to delete. A head lost on a cluster then found a state in the
bucket from minutes before.

The pruner also makes Tune forget what it deleted. Tune keeps every checkpoint a trial
registered, each with that epoch's whole result, and writes them all into every save; 4 trials
of 150 epochs made a 2.5 MB state, 94% of it that list.
"""

from __future__ import annotations

import logging
import posixpath
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow.fs
from ray import tune

# Sweeps saved before issue 27 name the logger by this module.
from sweeps._ray_compat import LatestResultLogger as LatestResultLogger
from sweeps._ray_compat import (
    auto_save_period,
    checkpoint_bookkeeping,
    forget_checkpoints,
    new_trials_stored_at,
)

CHECKPOINT_PREFIX = "checkpoint_"

log = logging.getLogger(__name__)


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
        self._live_parts()

    def _live_parts(self) -> None:
        # This driver's own: each trial's Tune bookkeeping (`_CheckpointManager`) and the
        # deletions' thread. Never pickled with the pruner.
        self._bookkeeping: dict[str, Any] = {}
        self._deletions = _Deletions()

    def __getstate__(self) -> dict[str, Any]:
        live = ("_bookkeeping", "_deletions")
        return {k: v for k, v in self.__dict__.items() if k not in live}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Tune pickles its callbacks into the experiment state: a sweep saved before
        # `_pruned` existed resumes with a pruner that lacks it.
        self.__dict__.update(state)
        self.__dict__.setdefault("_pruned", {})
        self._live_parts()

    def on_checkpoint(
        self,
        iteration: int,
        trials: list[Any],
        trial: Any,
        checkpoint: tune.Checkpoint,
        **info: Any,
    ) -> None:
        named = _named(checkpoint)
        if named is not None:
            self._latest[trial.trial_id] = named
            self._bookkeeping[trial.trial_id] = checkpoint_bookkeeping(trial)

    def get_state(self) -> dict[str, Any] | None:
        # Called while Tune saves the experiment state: this save names self._latest.
        for trial_id, named in self._named_by_last_save.items():
            if self._pruned.get(trial_id) != named:
                self._deletions.submit(named)
                forget_older_checkpoints(self._bookkeeping.get(trial_id), named.index)
                self._pruned[trial_id] = named
        self._named_by_last_save = dict(self._latest)
        return None  # nothing to restore: a resumed driver starts counting afresh

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the deletions asked for so far are done; False if ``timeout_s`` ran out."""
        return self._deletions.wait(timeout_s)


class _Deletions:
    """Deletes trials' older checkpoints on a thread of its own (the newest ask per trial),
    which lives while there is something to delete."""

    def __init__(self) -> None:
        self._pending: dict[str, _Named] = {}
        self._running = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        _ALL_DELETIONS.add(self)

    def submit(self, named: _Named) -> None:
        with self._changed:
            self._pending[named.trial_dir] = named  # a newer ask for a trial replaces an older
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="checkpoint-pruner", daemon=True
                )
                self._thread.start()

    def wait(self, timeout_s: float | None) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._pending and not self._running, timeout_s
            )

    def _run(self) -> None:
        while True:
            with self._changed:
                if not self._pending:
                    self._thread = None
                    self._changed.notify_all()
                    return
                _, named = self._pending.popitem()
                self._running += 1
            try:
                delete_older_checkpoints(named.filesystem, named.trial_dir, named.index)
            except Exception as error:  # left on storage, and said
                log.warning(
                    "could not delete the checkpoints below %d in %s: %s",
                    named.index,
                    named.trial_dir,
                    error,
                )
            finally:
                with self._changed:
                    self._running -= 1


_ALL_DELETIONS: weakref.WeakSet[_Deletions] = weakref.WeakSet()
DELETIONS_WAIT_S = 120.0


@contextmanager
def deletions_finished(timeout_s: float = DELETIONS_WAIT_S) -> Iterator[None]:
    """Around a Tune run: at its end, wait for the pruners' deletions (Tune's last save asks
    for some after the callbacks heard the experiment end), or say what was left."""
    try:
        yield
    finally:
        for deletions in list(_ALL_DELETIONS):
            if not deletions.wait(timeout_s):
                log.warning("checkpoints still being deleted after %.0f s: some stay", timeout_s)


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


def forget_older_checkpoints(bookkeeping: Any, index: int) -> None:
    """Drop the checkpoints numbered below ``index`` from a trial's Tune bookkeeping.

    ``bookkeeping`` (`sweeps._ray_compat.checkpoint_bookkeeping`) lists the checkpoints Tune
    saves with the experiment state and `Result.best_checkpoints` reads: after a deletion both
    would name directories that are gone. Its latest checkpoint is kept apart and never dropped.
    """
    if bookkeeping is None:
        return

    def keep(path: str) -> bool:
        number = _path_index(path)
        return number is None or number >= index

    forget_checkpoints(bookkeeping, keep)


def _named(checkpoint: tune.Checkpoint) -> _Named | None:
    index = _path_index(checkpoint.path)
    if index is None:
        return None
    return _Named(checkpoint.filesystem, posixpath.dirname(checkpoint.path.rstrip("/")), index)


def _path_index(path: str) -> int | None:
    return _index(posixpath.basename(path.rstrip("/")))


def _index(name: str) -> int | None:
    suffix = name.removeprefix(CHECKPOINT_PREFIX)
    return int(suffix) if name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


# Tune's experiment-state save is O(trials): every trial's state, the whole pickled study, the
# staging directory copied to storage. Measured (benchmarks/sweep_scale_tune_state.py,
# BENCHMARKS.md) at 0.15 s for 1,000 trials and 1.7 s for 10,000 here: saved every second,
# that is 13% and 62% of the driver's loop. Tune's own "auto" period keeps saves to 5% of the
# loop, but never more often than every 10 s, which makes a small sweep's resume redo up to
# 10 s of work.
MIN_STATE_SAVE_PERIOD_S = 1.0
STATE_SAVE_SHARE = 0.05


@contextmanager
def adaptive_state_saves(min_period_s: float = MIN_STATE_SAVE_PERIOD_S) -> Iterator[None]:
    """While a sweep runs with ``TUNE_GLOBAL_CHECKPOINT_S=auto``: save the experiment state
    every ``min_period_s``, or less often once a save takes more than 5% of that."""
    with auto_save_period(lambda time_taken: max(min_period_s, time_taken / STATE_SAVE_SHARE)):
        yield


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
    with new_trials_stored_at(storage):
        yield
