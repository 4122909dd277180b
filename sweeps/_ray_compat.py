"""The only place the engine touches Ray Tune's internals; it refuses at import (the driver imports
it before it starts anything) a Ray it was not tested with (`sweeps.tested_versions`).

What is private here, and why no public API does it (Ray 2.60.0):

- `auto_save_period`: Tune's "auto" period for saving the experiment state is at least 10 s
  (`_ExperimentCheckpointManager._update_auto_checkpoint_time`); a fixed
  ``TUNE_GLOBAL_CHECKPOINT_S`` cannot grow with a large sweep's save time. The rule is patched
  in while a sweep runs (`sweeps.checkpoints.adaptive_state_saves` says which).
- `new_trials_stored_at`: a resumed `SearchGenerator` brings back the pickled `Experiment`,
  storage and all (`SearchGenerator.set_state`), so trials it creates after a resume from a
  moved directory would be stored at the old place; nothing public re-points it.
- `checkpoint_bookkeeping`, `forget_checkpoints`: a trial's list of registered checkpoints
  (`_CheckpointManager._checkpoint_results`), which Tune writes into every state save, has no
  public way to drop entries (`sweeps.checkpoints` deletes the directories they name).
- `drop_metric_windows`, `latest_checkpoint_report`: Tune keeps, for each trial, windows of
  the last 5 and 10 values of every reported number (`_TrainingRunMetadata._n_steps`), and the
  report of its latest checkpoint, and writes both into every state save; nothing public turns
  the windows off or reaches that report (`sweeps.tune_results` trims them).
- `compact_finished_trial`, `compact_trial_states`: a trial that Tune will not run again (a
  resumed sweep skips finished and failed trials) still carries into every state save what only
  a running trial needs: its latest checkpoint's record, the functions that named it, its
  default resources, and an analysis and last report of every key; and Tune writes each trial's
  state as indented JSON (`Trial.get_json_state`, `TuneController._get_trial_checkpoints`).
  Nothing public drops them or sets the format (`sweeps.tune_results` uses both).
- `asked_trials`, `searcher_study`: Ray's `OptunaSearch` keeps its Optuna study and the trials
  it asked for in private attributes (``_ot_study``, ``_ot_trials``).
- `SafeFallbackEncoder`: the JSON encoder of Tune's result files (``ray.air._internal``), and
  where those files lie in the driver's staging directory (`staged_trial_files`: a trial's
  ``local_path`` and the file names of ``ray.air.constants``, which Ray's API reference does
  not name).
- `restored_searcher`, `restored_with_budget`, `set_time_budget`: a restored experiment runs
  under the budget Tune saved (`SearchGenerator`'s sample count and its `ConcurrencyLimiter`'s
  limit in the searcher state, the `TuneConfig` in ``tuner.pkl``); `Tuner.restore` takes no
  new budget (Ray issues #42221, #20886), so a resumed sweep sets it on the restored objects.
  Tune also takes the newest searcher state in a staging directory that another copy of the
  sweep restored in the same process may have filled; only the experiment's own files are
  left there.
- `LatestResultLogger`: Tune's JSON result logger, made to keep one result per trial; it
  overrides the logger's hooks and calls its ``update_config``, which Ray does not document.
- `STORAGE_LOGGER`: the name of the logger of Ray's storage layer.
- `runtime_working_dir`: a trial's process starts in the runtime environment's working
  directory (a sweep's code bundle), and Tune then moves it into the trial's own directory,
  leaving the first in ``TUNE_ORIG_WORKING_DIR`` (`Trainable.setup`); no API returns it.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs
import ray
from ray.air._internal.json import SafeFallbackEncoder
from ray.air.constants import EXPR_PARAM_FILE, EXPR_RESULT_FILE
from ray.train._internal.storage import get_fs_and_path
from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
from ray.tune.execution.tune_controller import TuneController
from ray.tune.logger import JsonLoggerCallback
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.search_generator import SearchGenerator

from sweeps.tested_versions import require_tested

if TYPE_CHECKING:
    import optuna

require_tested("ray", ray.__version__)

__all__ = [
    "STORAGE_LOGGER",
    "LatestResultLogger",
    "SafeFallbackEncoder",
    "asked_trials",
    "auto_save_period",
    "checkpoint_bookkeeping",
    "compact_finished_trial",
    "compact_trial_states",
    "drop_metric_windows",
    "forget_checkpoints",
    "latest_checkpoint_report",
    "new_trials_stored_at",
    "restored_searcher",
    "restored_with_budget",
    "searcher_study",
    "set_time_budget",
    "staged_trial_files",
]

STORAGE_LOGGER = "ray.train._internal.storage"
ORIGINAL_WORKING_DIR = "TUNE_ORIG_WORKING_DIR"


@dataclass(frozen=True)
class StagedTrialFiles:
    """A trial's files in the driver's staging directory, which Tune uploads at every save."""

    params: Path  # Tune's params.json
    result: Path  # Tune's result.json
    scratch: Path  # a directory beside the staging one, for files being written


def staged_trial_files(trial: Any) -> StagedTrialFiles:
    """Where ``trial``'s parameter and result files lie in the driver's staging directory."""
    return StagedTrialFiles(
        params=Path(trial.local_path, EXPR_PARAM_FILE),
        result=Path(trial.local_path, EXPR_RESULT_FILE),
        scratch=Path(trial.local_experiment_path).parent,
    )


def runtime_working_dir() -> Path:
    """The directory a Tune trial's process started in: its runtime environment's working
    directory, before Tune moved into the trial's (see the module's docstring)."""
    return Path(os.environ.get(ORIGINAL_WORKING_DIR) or os.getcwd())


@contextmanager
def _patched(owner: type, name: str, replacement: Callable[..., Any]) -> Iterator[None]:
    """While inside: ``owner.name`` is ``replacement``; the original comes back after."""
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextmanager
def auto_save_period(period: Callable[[float], float]) -> Iterator[None]:
    """While inside: with ``TUNE_GLOBAL_CHECKPOINT_S=auto``, Tune waits ``period(s)`` seconds
    after an experiment-state save that took ``s`` seconds before the next one."""

    def update(self: _ExperimentCheckpointManager, time_taken: float) -> None:
        if self._auto_checkpoint_enabled:
            self._checkpoint_period = period(time_taken)

    with _patched(_ExperimentCheckpointManager, "_update_auto_checkpoint_time", update):
        yield


@contextmanager
def new_trials_stored_at(storage_path: str) -> Iterator[None]:
    """While inside: a restored `SearchGenerator` creates its trials under ``storage_path`` (Tune's
    storage path or URI), not where the pickled experiment was."""
    filesystem, fs_path = get_fs_and_path(storage_path, None)
    original = SearchGenerator.set_state

    def set_state(self: SearchGenerator, state: dict[str, Any]) -> None:
        original(self, state)
        experiment: Any = self._experiment
        moved = copy.copy(experiment.storage)
        moved.storage_filesystem, moved.storage_fs_path = filesystem, fs_path
        experiment.storage = experiment.spec["storage"] = moved  # new trials take the spec's

    with _patched(SearchGenerator, "set_state", set_state):
        yield


@contextmanager
def restored_with_budget(experiment: str, max_trials: int, max_concurrent: int) -> Iterator[None]:
    """While inside: a restored `SearchGenerator` may create up to ``max_trials`` trials in all,
    ``max_concurrent`` at once, whatever the budget its saved state holds (a sweep extended
    after it finished, or whose concurrency changed).

    It also restores from the searcher state of ``experiment`` (Tune's storage path or URI)
    only: Tune reads the newest searcher state in its staging directory, which is named by the
    experiment's first start and its name, so a process that restored another copy of the same
    sweep before would find that copy's newer state there and take it."""
    original = SearchGenerator.restore_from_dir
    filesystem, fs_path = get_fs_and_path(experiment, None)
    stored = {
        info.base_name
        for info in filesystem.get_file_info(pyarrow.fs.FileSelector(fs_path))
        if info.type == pyarrow.fs.FileType.File
    }

    def restore_from_dir(self: SearchGenerator, dirpath: str) -> None:
        for pattern in (self.CKPT_FILE_TMPL.format("*"), Searcher.CKPT_FILE_TMPL.format("*")):
            for staged in Path(dirpath).glob(pattern):
                if staged.name not in stored:
                    staged.unlink()
        original(self, dirpath)
        self._total_samples = max_trials
        self._finished = False  # set once every sample was created; the counter still counts
        wrapped: Any = self.searcher
        while hasattr(wrapped, "searcher"):
            if isinstance(wrapped, ConcurrencyLimiter):
                wrapped.max_concurrent = max_concurrent
            wrapped = wrapped.searcher

    with _patched(SearchGenerator, "restore_from_dir", restore_from_dir):
        yield


def restored_searcher(tuner: Any) -> Any:
    """The searcher a restored `tune.Tuner` brought back from ``tuner.pkl``."""
    return tuner._local_tuner._tune_config.search_alg


def set_time_budget(tuner: Any, time_budget_s: float | None) -> None:
    """A restored `tune.Tuner`'s time budget (`Tuner.restore` brings back the saved one and
    takes no new `TuneConfig`)."""
    tuner._local_tuner._tune_config.time_budget_s = time_budget_s


def checkpoint_bookkeeping(trial: Any) -> Any:
    """A Tune trial's checkpoint bookkeeping (`_CheckpointManager`), for `forget_checkpoints`."""
    return trial.run_metadata.checkpoint_manager


def forget_checkpoints(bookkeeping: Any, keep: Callable[[str], bool]) -> None:
    """Drop from a trial's bookkeeping the registered checkpoints whose path ``keep`` refuses.
    Its latest checkpoint is kept apart by Tune and never dropped."""
    bookkeeping._checkpoint_results = [
        result for result in bookkeeping._checkpoint_results if keep(result.checkpoint.path)
    ]


def drop_metric_windows(trial: Any) -> None:
    """Stop Tune keeping windows of the last values of each metric ``trial`` reports, and drop
    those it kept: its analysis keeps only max, min, mean and last."""
    metadata = trial.run_metadata
    if not metadata._n_steps and not metadata.metric_n_steps:
        return
    metadata._n_steps = ()
    metadata.metric_n_steps = {}
    for analysis in metadata.metric_analysis.values():
        for key in [key for key in analysis if key.startswith("last-")]:
            del analysis[key]
    metadata.invalidate_cache()


def latest_checkpoint_report(trial: Any) -> dict[str, Any] | None:
    """The report Tune keeps with ``trial``'s latest checkpoint, to be changed in place; Tune
    writes it with the trial's next state save. None before its first checkpoint."""
    latest = checkpoint_bookkeeping(trial).latest_checkpoint_result
    trial.run_metadata.invalidate_cache()
    return latest.metrics if latest is not None else None


def compact_finished_trial(
    trial: Any, result_keys: Collection[str], analysis_keys: Collection[str]
) -> None:
    """Drop from ``trial``, which Tune will not run again, what only a running trial needs: its
    checkpoints' records (their directories stay), the functions that named it (its names
    stay), its default resources (its resources stay), its storage's syncing of the trial's
    files (its paths stay), and all of its last report but ``result_keys`` and of its analysis
    but ``analysis_keys``."""
    metadata = trial.run_metadata
    bookkeeping = metadata.checkpoint_manager
    bookkeeping._checkpoint_results = []
    bookkeeping._latest_checkpoint_result = None
    # Assigning to the metadata's attributes invalidates its cached JSON.
    last, analysis = metadata.last_result, metadata.metric_analysis
    metadata.last_result = {k: v for k, v in last.items() if k in result_keys}
    metadata.metric_analysis = {k: v for k, v in analysis.items() if k in analysis_keys}
    trial.trial_name_creator = None
    trial.trial_dirname_creator = None
    trial._default_placement_group_factory = None
    trial.storage.syncer = trial.storage.sync_config = None  # the trial's own copy
    trial.invalidate_json_state()


@contextmanager
def compact_trial_states() -> Iterator[None]:
    """While inside: Tune writes each trial's state into the experiment state as compact JSON,
    where it writes it indented (about a tenth of a finished trial's bytes)."""
    original = TuneController._get_trial_checkpoints

    def compacted(self: TuneController) -> dict[str, Any]:
        changed = [trial.trial_id for trial in self._trials_to_cache]
        states: dict[str, Any] = original(self)  # Ray annotates str; each is (state, meta)
        for trial_id in changed:
            states[trial_id] = tuple(_compact_json(part) for part in states[trial_id])
        return states

    with _patched(TuneController, "_get_trial_checkpoints", compacted):
        yield


def _compact_json(text: str) -> str:
    # Tune's encoder writes plain JSON (pickles as hex strings), read back with json.loads.
    return json.dumps(json.loads(text), separators=(",", ":"))


def asked_trials(searcher: OptunaSearch) -> dict[str, optuna.Trial]:
    """The Optuna trials ``searcher`` asked for, by Tune trial id (the live dict)."""
    trials: dict[str, optuna.Trial] = searcher._ot_trials
    return trials


def searcher_study(searcher: OptunaSearch) -> optuna.Study:
    """The Optuna study behind ``searcher`` (set once it knows its search space)."""
    study: optuna.Study | None = searcher._ot_study
    if study is None:
        raise RuntimeError("the OptunaSearch has no study yet: it was given no search space")
    return study


class LatestResultLogger(JsonLoggerCallback):
    """Tune's results file for each trial, holding only the trial's latest result (here, not in
    `sweeps.checkpoints`, which re-exports it: it relies on how `JsonLoggerCallback` writes the
    parameter file, ``update_config``).

    Tune uploads the driver's whole staging directory, trials' result files among them, at
    every save of its state. Tune's own JSON logger appends every report, so each upload grew
    with every epoch of every trial (450 KB per 150-epoch digits trial, uploaded again at each
    save). Tune reads the file back once, into `ResultGrid` dataframes the sweep does not use;
    MLflow keeps every epoch.
    """

    def __init__(self) -> None:
        super().__init__()

    def log_trial_start(self, trial: Any) -> None:
        self.update_config(trial, trial.config)

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        files = staged_trial_files(trial)
        if not files.params.exists():
            self.log_trial_start(trial)
        # Written beside the staging directory, then moved in: an upload never reads half.
        with tempfile.NamedTemporaryFile("w", dir=files.scratch, delete=False) as staged:
            json.dump(result, staged, cls=SafeFallbackEncoder)
            staged.write("\n")
        os.replace(staged.name, files.result)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        pass  # no file is held open
