"""Running a sweep by id: the spec comes from a store, progress and the outcome go back to it.

`SweepStore` is what the driver needs from a store; the service implements it on its database.
`DirectoryStore` implements it on plain files, for the command line and for tests:

    ROOT/ID/spec.yaml      the spec (written by whoever submits the sweep)
    ROOT/ID/limits.json    the caps and data root it was admitted under (optional)
    ROOT/ID/started.json   the MLflow experiment and parent run, once the driver has them
    ROOT/ID/trials.jsonl   one line per trial event
    ROOT/ID/outcome.json   the sweep's outcome, written at the end
    ROOT/ID/STOP           present once a stop was requested
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from sweeps.driver import DriverOptions, SweepHooks, resume_sweep, run_sweep
from sweeps.records import SweepOutcome, SweepRecord, TrialEvent
from sweeps.settings import SweepSettings
from sweeps.spec import Budget, SweepSpec
from sweeps.spec.budget import EXTENDABLE, budget_changes, in_force, raises
from sweeps.spec.limits import Limits
from sweeps.spec.parse import dump_spec, read_document, validate_shape
from sweeps.statefiles import has_state, read_record
from sweeps.trial_writer import TrialWriter


class SweepStore(Protocol):
    """What the driver needs from a store. ``load_spec`` returns the spec as it was admitted
    (its shape is read back; the rules ran when it was submitted and run again in the driver).

    A store on a database may also say which (`store_database_url`): the sweep's Optuna study
    is then kept beside it (`sweeps.study`).
    """

    def load_spec(self, sweep_id: str) -> SweepSpec: ...

    def load_limits(self, sweep_id: str) -> Limits | None:
        """The caps and data root the sweep was admitted under; None: the driver's own."""
        ...

    def record_start(self, sweep_id: str, record: SweepRecord) -> None: ...

    def record_trials(self, sweep_id: str, events: Sequence[TrialEvent]) -> None:
        """Record trial events, in order (the driver hands them over in batches)."""
        ...

    def record_outcome(self, sweep_id: str, outcome: SweepOutcome) -> None: ...

    def stop_requested(self, sweep_id: str) -> bool: ...

    def allowance(self, sweep_id: str) -> int | None:
        """The trials the sweep may run at once now, as whoever shares the cluster among
        sweeps set it (the service's fair share, `service.fair_share`); None: its budget's
        max_concurrent_trials alone. The driver asks before it starts a trial."""
        ...


class DirectoryStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _dir(self, sweep_id: str) -> Path:
        if not sweep_id or "/" in sweep_id or sweep_id in (".", ".."):
            raise ValueError(f"bad sweep id {sweep_id!r}")
        return self.root / sweep_id

    def submit(self, sweep_id: str, spec: SweepSpec, limits: Limits | None = None) -> Path:
        directory = self._dir(sweep_id)
        directory.mkdir(parents=True, exist_ok=False)
        (directory / "spec.yaml").write_text(dump_spec(spec))
        if limits is not None:
            (directory / "limits.json").write_text(json.dumps(limits.to_document()) + "\n")
        return directory

    def load_limits(self, sweep_id: str) -> Limits | None:
        path = self._dir(sweep_id) / "limits.json"
        return Limits.from_document(json.loads(path.read_text())) if path.exists() else None

    def load_spec(self, sweep_id: str) -> SweepSpec:
        path = self._dir(sweep_id) / "spec.yaml"
        if not path.exists():
            raise FileNotFoundError(f"no sweep {sweep_id!r} in {self.root} (no {path.name})")
        return validate_shape(read_document(path.read_text()))

    def record_start(self, sweep_id: str, record: SweepRecord) -> None:
        target = self._dir(sweep_id) / "started.json"
        target.write_text(json.dumps(asdict(record), indent=2) + "\n")

    def record_trials(self, sweep_id: str, events: Sequence[TrialEvent]) -> None:
        with open(self._dir(sweep_id) / "trials.jsonl", "a") as out:
            out.writelines(json.dumps(asdict(event)) + "\n" for event in events)

    def record_trial(self, sweep_id: str, event: TrialEvent) -> None:
        self.record_trials(sweep_id, [event])

    def trial_events(self, sweep_id: str) -> list[dict[str, Any]]:
        path = self._dir(sweep_id) / "trials.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def record_outcome(self, sweep_id: str, outcome: SweepOutcome) -> None:
        target = self._dir(sweep_id) / "outcome.json"
        partial = target.with_suffix(".json.partial")
        partial.write_text(json.dumps(outcome.to_dict(), indent=2) + "\n")
        os.replace(partial, target)

    def request_stop(self, sweep_id: str) -> None:
        (self._dir(sweep_id) / "STOP").touch()

    def stop_requested(self, sweep_id: str) -> bool:
        directory = self._dir(sweep_id)
        if not directory.is_dir():
            raise FileNotFoundError(f"no sweep {sweep_id!r} in {self.root}")
        return (directory / "STOP").exists()

    def set_allowance(self, sweep_id: str, trials: int | None) -> None:
        path = self._dir(sweep_id) / "ALLOWANCE"
        if trials is None:
            path.unlink(missing_ok=True)
            return
        if trials < 0:
            raise ValueError(f"an allowance is 0 or more trials, got {trials}")
        partial = path.with_suffix(".partial")
        partial.write_text(f"{trials}\n")
        os.replace(partial, path)

    def allowance(self, sweep_id: str) -> int | None:
        path = self._dir(sweep_id) / "ALLOWANCE"
        return int(path.read_text()) if path.exists() else None


def _extension(path: str, stored: SweepSpec) -> dict[str, Any]:
    """What the store's budget for the sweep raises over the budget it last ran under (a sweep
    extended through the store's owner, the service)."""
    record = read_record(path)
    if record is None:
        return {}
    ran = validate_shape(record.spec).budget
    changes = budget_changes(ran, stored.budget)
    # A lowered one was changed while the sweep ran (`in_force` carries it to the driver).
    return {
        name: after
        for name, (before, after) in changes.items()
        if name in EXTENDABLE and raises(before, after)
    }


def run_stored(
    sweep_id: str, store: SweepStore, options: DriverOptions | None = None
) -> SweepOutcome:
    """Run sweep ``sweep_id`` from ``store``; if an earlier attempt left state, resume it.

    The Tune experiment and the MLflow parent run are named by the sweep id, so a new attempt
    after a crash continues the same sweep instead of starting a second one.
    """
    options = options or DriverOptions()
    if options.store_url is None:
        options = dataclasses.replace(options, store_url=store_database_url(store))
    settings = SweepSettings()
    writer = TrialWriter(
        functools.partial(store.record_trials, sweep_id), flush_s=settings.store_flush_s
    )

    def should_stop() -> bool:
        return store.stop_requested(sweep_id)

    def on_start(record: SweepRecord) -> None:
        store.record_start(sweep_id, record)

    path = options.experiment_path(settings, sweep_id)
    # The caps it was admitted under, not this process's environment's.
    limits = store.load_limits(sweep_id)

    def budget() -> Budget:
        stored = in_force(
            store.load_spec(sweep_id).budget, limits or Limits.from_settings(settings)
        )
        return within_allowance(stored, store.allowance(sweep_id))

    hooks: SweepHooks = {
        "on_trial": writer.put,
        "should_stop": should_stop,
        "on_start": on_start,
        "budget": budget,
    }
    try:
        if has_state(path):
            extend = _extension(path, store.load_spec(sweep_id))
            outcome = resume_sweep(sweep_id, options, limits=limits, extend=extend, **hooks)
        else:
            spec = store.load_spec(sweep_id)
            outcome = run_sweep(spec, options, limits=limits, sweep_name=sweep_id, **hooks)
    except BaseException:
        with contextlib.suppress(Exception):  # the driver's own error is the one to see
            writer.close()
        raise
    writer.close()  # every trial's last event is in the store before the outcome
    store.record_outcome(sweep_id, outcome)
    return outcome


def within_allowance(budget: Budget, allowance: int | None) -> Budget:
    """``budget`` with its concurrency held to the store's allowance for the sweep (which may
    be 0: no new trial starts until the allowance rises)."""
    if allowance is None or allowance >= budget.max_concurrent_trials:
        return budget
    # model_copy does not validate: the Budget model's own floor is 1, an allowance's is 0.
    return budget.model_copy(update={"max_concurrent_trials": allowance})


def store_database_url(store: object) -> str | None:
    """The database ``store`` keeps its sweeps in: its ``database_url``, else the URL (with its
    password) of the engine its ``sessions`` are bound to, as the service's `DatabaseSweepStore`
    has; None for a store without one (`DirectoryStore`)."""
    url = getattr(store, "database_url", None)
    if url is None:
        sessions = getattr(store, "sessions", None)
        bind = getattr(sessions, "kw", {}).get("bind")
        url = getattr(bind, "url", None)
    if url is None or isinstance(url, str):
        return url
    rendered: str = url.render_as_string(hide_password=False)  # an sqlalchemy URL
    return rendered
