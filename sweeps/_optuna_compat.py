"""The only place the engine touches Optuna's internals; it refuses at import (the driver imports
it before it starts anything) an Optuna it was not tested with (`sweeps.tested_versions`).

What is private here, and why no public API does it (Optuna 5.0.0):

- `CachedRDBStorage`: Optuna's cache in front of an RDB storage, as a class the engine can
  subclass. `optuna.create_study(storage=RDBStorage(...))` wraps the storage in the same cache
  itself, but that cache pickles every trial it has read (about 350 bytes each: 350 KB for 1,000
  trials), and Tune pickles the sweep's study into every save of its state. A subclass of the
  cache decides what it pickles: `sweeps.study.StudyStorage` pickles the study's name only.
- `set_trial_user_attr`: a note on a running trial that no `optuna.Trial` object holds any more
  (asked by a driver that was killed). Optuna sets a trial's user attributes through its `Trial`
  only, and its storage addresses trials by their private id. Failing the trial is public
  (`Study.tell`).
- `PicklableNSGAIISampler`'s base: Optuna 5.1's genetic samplers hold a `threading.Lock`
  (``_thread_lock``), which no pickle can write; 5.0.0 has none, and the base pickles either.
"""

from __future__ import annotations

import threading
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import FrozenTrial

from sweeps.tested_versions import require_tested

require_tested("optuna", optuna.__version__)

# Attributes of Optuna's samplers that cannot be pickled, remade when a sampler is loaded.
_SAMPLER_LOCKS = ("_thread_lock",)


class CachedRDBStorage(_CachedStorage):
    """An RDB storage behind Optuna's cache, as `optuna.create_study` would put it; a subclass
    says what it pickles (``__getstate__``/``__setstate__``: Optuna's pickle all it cached)."""

    def __init__(self, backend: RDBStorage) -> None:
        super().__init__(backend)


def set_trial_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """Set a user attribute of ``study``'s unfinished ``trial`` without its `optuna.Trial`."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


class LockFreeNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II that pickles: its locks are left out, and new ones made when it is loaded."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _SAMPLER_LOCKS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for name in _SAMPLER_LOCKS:
            setattr(self, name, threading.Lock())
