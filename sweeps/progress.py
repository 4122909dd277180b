"""The driver's view of a running sweep: trial events, a progress line, the stop flag.

Tune pickles its callbacks and stopper into the experiment state, so they carry only the sweep
name; the live objects (user hooks, a store) sit in `SweepMonitor`, registered per process.
"""

from __future__ import annotations

import heapq
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray import tune

from sweeps.records import (
    FINISHED_STATES,
    PLACEMENT_KEY,
    RUN_ID_KEY,
    Report,
    StopFlag,
    TrialEvent,
    TrialHook,
    TrialState,
    best_so_far_text,
    counts_text,
    loss,
    reported_metrics,
)
from sweeps.spec import Budget, Objective, SweepSpec
from sweeps.spec.budget import budget_changes, describe_changes
from sweeps.spec.resolve import trial_epochs

BudgetHook = Callable[[], "Budget | None"]


@dataclass
class SweepMonitor:
    """Live state of one sweep in the driver process."""

    sweep: str
    objectives: list[Objective]
    max_trials: int
    on_trial: TrialHook | None = None
    should_stop: StopFlag | None = None
    stop_poll_s: float = 1.0
    max_failed_trials: int | None = None
    stream: TextIO | None = field(default_factory=lambda: sys.stderr)
    states: dict[str, TrialState] = field(default_factory=dict)
    # Called with every trial's final state as it changes, so a resumed driver knows them.
    persist: Callable[[dict[str, TrialState]], None] | None = None
    # Called with each event and the trial's raw last result, after the user's hook.
    on_result: Callable[[TrialEvent, dict[str, Any]], None] | None = None
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Each running trial's last whole report: Tune keeps only a part (`sweeps.tune_results`).
    last_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Each trial's final report, by trial id: its metrics and MLflow run id, as this driver saw
    # them end; `keep_final` keeps each one where a resumed driver finds it.
    finals: dict[str, dict[str, Any]] = field(default_factory=dict)
    keep_final: Callable[[str, dict[str, Any]], None] | None = None
    stop_requested: bool = False
    # The budget in force (`sweeps.live_budget`), and where a change to it comes from: asked
    # with the stop flag, at most once per ``stop_poll_s``. None: Tune's own budget only.
    budget: Budget | None = None
    read_budget: BudgetHook | None = None
    budget_changes: list[dict[str, list[Any]]] = field(default_factory=list)
    # Tune's trials as of its last step, and those the limiter asked for since.
    created: int = 0
    live: int = 0
    clock: Callable[[], float] = time.monotonic
    started: float | None = None
    # A trial waiting this long for resources while none runs can never be placed.
    placement_timeout_s: float = float("inf")
    unplaceable: str | None = None  # why the sweep ended: a trial nothing could place
    _pending_since: dict[str, float] = field(default_factory=dict)
    _last_poll: float = 0.0
    _last_event: dict[str, TrialEvent] = field(default_factory=dict)
    _last_line: str = ""
    _ranked: list[tuple[float, str, int]] = field(default_factory=list)
    _reports: dict[str, int] = field(default_factory=dict)
    _counts: Counter[str | None] = field(default_factory=Counter)
    _unsaved_states: bool = False
    _last_budget_poll: float = float("-inf")

    def __post_init__(self) -> None:
        self._counts.update(self.states.values())
        if self.started is None:
            self.started = self.clock()

    def observe(self, trials: list[Any]) -> None:
        """Tune's trials at the start of one of its steps: how many exist and how many are not
        over (waiting, running or paused), for `sweeps.live_budget.BudgetLimiter`."""
        self.created = len(trials)
        self.live = sum(t.status in ("PENDING", "RUNNING", "PAUSED") for t in trials)

    def poll_budget(self) -> None:
        """Take the budget in force from ``read_budget``, at most once per ``stop_poll_s``
        (with `poll_stop`'s clock); a change is printed and kept in ``budget_changes``."""
        if self.read_budget is None or self.budget is None:
            return
        now = self.clock()
        if now - self._last_budget_poll < self.stop_poll_s:
            return
        self._last_budget_poll = now
        wanted = self.read_budget()
        if wanted is None or wanted == self.budget:
            return
        changes = budget_changes(self.budget, wanted)
        self.budget = wanted
        self.budget_changes.append(changes)
        if self.stream is not None:
            self.stream.write(f"[{self.sweep}] budget: {describe_changes(changes)}\n")
            self.stream.flush()

    @property
    def out_of_time(self) -> bool:
        """The time budget in force has run out (it counts from this attempt's start)."""
        if self.budget is None or self.budget.time_budget_s is None or self.started is None:
            return False
        return self.clock() - self.started >= self.budget.time_budget_s

    def update(self, event: TrialEvent, result: dict[str, Any] | None = None) -> None:
        previous = self._last_event.get(event.trial_id)
        if previous is not None and (previous.state, previous.epoch) == (event.state, event.epoch):
            return  # Tune announces some changes twice (start, then restore)
        self._last_event[event.trial_id] = event
        self._counts[self.states.get(event.trial_id)] -= 1
        self._counts[event.state] += 1
        self.states[event.trial_id] = event.state
        if event.state in FINISHED_STATES:
            self._unsaved_states = True
            self.last_results.pop(event.trial_id, None)
            self._keep_final(event)
        if event.metrics:
            self.latest[event.trial_id] = {"name": event.trial_name, **event.metrics}
        if event.trial_id in self.latest:  # a new state (failed, say) can change the best too
            self._rank(event)
        # The user's hook (the service's store) first: if MLflow is down, closing the trial's
        # run below fails the driver loudly, and the store must already hold the trial's state.
        if self.on_trial is not None:
            self.on_trial(event)
        if self.on_result is not None:
            self.on_result(event, result or {})
        self.print_progress()

    def _keep_final(self, event: TrialEvent) -> None:
        if not event.metrics:
            return  # failed before its first report: Tune's error says all there is
        final = {**event.metrics, RUN_ID_KEY: event.mlflow_run_id}
        self.finals[event.trial_id] = final
        if self.keep_final is not None:
            # Before Tune's next state save names the trial finished: a resumed driver that
            # finds it finished finds its report too.
            self.keep_final(event.trial_id, final)

    def count(self, *states: TrialState) -> int:
        return sum(self._counts[state] for state in states)

    def save_states(self) -> None:
        """Persist the finished trials' states if any changed. Called while Tune saves its
        experiment state (`SweepCallback.get_state`), so the file is as fresh as that state
        and a sweep of n trials rewrites it once per save, not once per finished trial."""
        if self._unsaved_states and self.persist is not None:
            self.persist({k: v for k, v in self.states.items() if v in FINISHED_STATES})
            self._unsaved_states = False

    @property
    def failed_too_often(self) -> bool:
        return self.max_failed_trials is not None and self.count("failed") > self.max_failed_trials

    def best(self) -> tuple[str, float] | None:
        """The best first-objective value among the latest reports of the trials not failed."""
        found = self._best_trial()
        if found is None:
            return None
        values = self.latest[found]
        return values["name"], float(values[self.objectives[0].metric])

    def _best_trial(self) -> str | None:
        """The trial whose latest report ranks first (`ranked_trials`, ``finished_only=False``).

        Every report goes on a heap; entries that a newer report of their trial superseded, or
        whose trial failed, are dropped when they reach the top: O(log n) per report.
        """
        while self._ranked:
            _, trial_id, report = self._ranked[0]
            if self._reports.get(trial_id) == report and self.states.get(trial_id) != "failed":
                return trial_id
            heapq.heappop(self._ranked)
        return None

    def _rank(self, event: TrialEvent) -> None:
        report = self._reports.get(event.trial_id, 0) + 1
        self._reports[event.trial_id] = report
        latest = Report(event.state, self.latest[event.trial_id])
        value = loss(self.objectives[0], latest, finished_only=False)
        if value is not None:
            heapq.heappush(self._ranked, (value, event.trial_id, report))

    def progress_line(self) -> str:
        budget = self.max_trials if self.budget is None else self.budget.max_trials
        line = f"[{self.sweep}] {counts_text(self._counts, budget)}"
        best = self._best_trial()
        if best is not None:
            values = self.latest[best]
            text = best_so_far_text(self.objectives[0].metric, values["name"], values)
            line += f" | {text}"
        return line

    def print_progress(self) -> None:
        line = self.progress_line()
        if self.stream is None or line == self._last_line:
            return
        self._last_line = line
        self.stream.write(line + "\n")
        self.stream.flush()

    def check_placement(self, trials: list[Any]) -> None:
        """Note when each trial started waiting for resources; with nothing running, a wait
        past ``placement_timeout_s`` means the cluster cannot run the trial at all."""
        now = time.monotonic()
        pending = {t.trial_id: t for t in trials if t.status == "PENDING"}
        for trial_id in list(self._pending_since):
            if trial_id not in pending:
                del self._pending_since[trial_id]
        for trial_id in pending:
            self._pending_since.setdefault(trial_id, now)
        if self.unplaceable is not None or any(t.status == "RUNNING" for t in trials):
            return
        for trial_id, since in self._pending_since.items():
            if now - since > self.placement_timeout_s:
                trial = pending[trial_id]
                asked = getattr(trial, "placement_group_factory", None)
                needs = asked.required_resources if asked is not None else "its resources"
                self.unplaceable = (
                    f"trial {trial} waited {now - since:.0f} s for {needs} and nothing could run "
                    f"it (GRADREG_PLACEMENT_TIMEOUT_S={self.placement_timeout_s:g}); the cluster "
                    "has too few CPUs or GPUs for one trial: lower resources.cpu/gpu"
                )
                return

    def poll_stop(self) -> bool:
        """Ask the stop flag, at most once per ``stop_poll_s``."""
        if self.stop_requested or self.should_stop is None:
            return self.stop_requested
        now = time.monotonic()
        if now - self._last_poll >= self.stop_poll_s:
            self._last_poll = now
            self.stop_requested = bool(self.should_stop())
        return self.stop_requested


_MONITORS: dict[str, SweepMonitor] = {}


def register(monitor: SweepMonitor) -> None:
    _MONITORS[monitor.sweep] = monitor


def unregister(sweep: str) -> None:
    _MONITORS.pop(sweep, None)


def monitor_of(sweep: str) -> SweepMonitor | None:
    return _MONITORS.get(sweep)


def interrupt_tune() -> None:
    """End the Tune loop the way Ctrl-C does: save the experiment, leave trials resumable.

    Tune installs its SIGUSR1 handler in the driver's main thread for exactly this.
    """
    os.kill(os.getpid(), signal.SIGUSR1)


@contextmanager
def stop_on_signals(monitor: SweepMonitor) -> Iterator[None]:
    """Ctrl-C and SIGTERM become a stop request: state is saved and the sweep is resumable.

    A second signal gets the previous handler (for Ctrl-C: KeyboardInterrupt, no saving).
    Tune's own SIGINT handler is switched off (TUNE_DISABLE_SIGINT_HANDLER) so that every
    interruption goes through here and the outcome says "stopped".
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        monitor.stop_requested = True
        for sig, old in previous.items():
            signal.signal(sig, old)
        interrupt_tune()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class SweepCallback(tune.Callback):
    """Turns Tune's trial lifecycle into `TrialEvent`s and checks the stop flag each step."""

    def __init__(self, sweep: str, spec: SweepSpec) -> None:
        self.sweep = sweep
        self.spec = spec
        self._interrupted = False

    def _emit(self, trial: Any, state: TrialState, error: str | None = None) -> None:
        monitor = monitor_of(self.sweep)
        if monitor is None:
            return
        # The whole report, which Tune no longer holds once `TuneResultTrimmer` ran; a trial
        # restored by a resumed driver has only Tune's part until it reports again.
        result = monitor.last_results.get(trial.trial_id) or trial.last_result or {}
        metrics = reported_metrics(result)
        monitor.update(
            TrialEvent(
                sweep=self.sweep,
                trial_id=trial.trial_id,
                trial_name=str(trial),
                state=state,
                params=dict(trial.config),
                metrics=metrics,
                epoch=int(result.get("epoch", 0)),
                mlflow_run_id=result.get(RUN_ID_KEY),
                error=error,
                placement=result.get(PLACEMENT_KEY),
            ),
            result,
        )

    def on_trial_start(self, iteration, trials, trial, **info):
        self._emit(trial, "running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        monitor = monitor_of(self.sweep)
        if monitor is not None:
            # A copy: the trimmer after this callback removes keys from ``result`` itself.
            monitor.last_results[trial.trial_id] = dict(result)
        self._emit(trial, "running")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._emit(trial, "retrying", _error_text(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._emit(trial, "failed", _error_text(trial))

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Tune sets done=True on a trial that ASHA stops too; only its epochs tell them apart.
        epoch = (trial.last_result or {}).get("epoch", 0)
        finished = epoch >= trial_epochs(self.spec, trial.config)
        self._emit(trial, "succeeded" if finished else "stopped")

    def get_state(self) -> dict[str, Any] | None:
        # Tune calls this while it saves the experiment state.
        monitor = monitor_of(self.sweep)
        if monitor is not None:
            monitor.save_states()
        return None  # the driver restores the states from their own file

    def on_step_begin(self, iteration, trials, **info):
        monitor = monitor_of(self.sweep)
        if monitor is not None:
            monitor.observe(trials)

    def on_step_end(self, iteration, trials, **info):
        monitor = monitor_of(self.sweep)
        if monitor is None:
            return
        monitor.check_placement(trials)
        monitor.poll_budget()
        if not self._interrupted and monitor.poll_stop():
            self._interrupted = True
            interrupt_tune()


class FailedTrialsStopper(tune.Stopper):
    """Ends the sweep once more trials have failed than the budget allows, once a trial
    could not be placed on the cluster in time, or once the time budget in force ran out."""

    def __init__(self, sweep: str) -> None:
        self.sweep = sweep

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        monitor = monitor_of(self.sweep)
        if monitor is None:
            return False
        return monitor.failed_too_often or monitor.unplaceable is not None or monitor.out_of_time


def _error_text(trial: Any) -> str | None:
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        with open(path) as handle:
            lines = [line for line in handle.read().strip().splitlines() if line.strip()]
        return lines[-1] if lines else None
    return None
