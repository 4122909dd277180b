"""Run a sweep: Ray Tune's Tuner with Optuna's sampler, ASHA, retries, MLflow parent/children.

`run_sweep(spec)` starts one; `resume_sweep(name)` continues one that was interrupted (its
finished trials are kept, never re-run). Both accept the hooks the service needs: a per-trial
callback and a cooperative stop flag, checked by the driver between Tune steps.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal, TextIO

import pyarrow.fs
import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from gradreg.metrics import ReliabilityBins
from sweeps.checkpoints import CheckpointPruner
from sweeps.checks import Limits, SpecError, dump_spec, max_epochs, semantic_issues
from sweeps.progress import (
    FailedTrialsStopper,
    StopFlag,
    SweepCallback,
    SweepMonitor,
    TrialEvent,
    TrialHook,
    register,
    reported_metrics,
    stop_on_signals,
    unregister,
)
from sweeps.settings import SweepSettings, absolute_storage
from sweeps.space import SearchSpace, make_sampler, trial_config
from sweeps.spec import Objective, SweepSpec
from sweeps.tracking import Tracker
from sweeps.trainable import BINS_KEY, RUN_ID_KEY, TrialContext, run_trial

SWEEP_FILE = "sweep.json"
STATES_FILE = "trial_states.json"
SWEEP_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Tune's settings for every sweep (environment variables it reads; set unless already set).
TUNE_ENV = {
    # Short trials checkpoint often; Tune's "snapshotting too often" warning is noise for them.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Tune's newer console output prints a banner and tables on stdout even at verbose=0;
    # the driver prints its own progress (stderr) and report (stdout, possibly JSON).
    "RAY_AIR_NEW_OUTPUT": "0",
    # MLflow holds the metrics for people; Tune needs only its result.json (added below).
    # Its CSV and TensorBoard loggers took 7 ms of the driver's loop per report.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # The driver turns Ctrl-C into its own stop request (sweeps.progress.stop_on_signals).
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # How stale the experiment state a killed driver leaves can be: work done after the last
    # save is done again on resume. Tune's default is 10 s or more; a save costs ~20 ms.
    "TUNE_GLOBAL_CHECKPOINT_S": "1",
}
SweepStatus = Literal["succeeded", "failed", "stopped"]
LOST_TRIAL_RUN = (
    "lost: the sweep's driver stopped before Tune saved this trial, so the sweep could not "
    "continue it and ran another in its place"
)
MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}


StartHook = Callable[["SweepRecord"], None]


class SweepExistsError(FileExistsError):
    pass


@dataclass(frozen=True)
class DriverOptions:
    """Where the sweep runs and records; None means the GRADREG_ settings' default."""

    ray_address: str | None = None
    tracking_uri: str | None = None
    storage_path: str | None = None
    stop_poll_s: float = 1.0
    stream: TextIO | None = None  # progress lines; None: stderr
    quiet: bool = False


@dataclass(frozen=True)
class TrialSummary:
    trial_id: str
    name: str
    state: str
    params: dict[str, Any]
    metrics: dict[str, float]
    mlflow_run_id: str | None
    error: str | None = None


@dataclass(frozen=True)
class SweepOutcome:
    sweep: str
    status: SweepStatus
    reason: str
    objectives: list[dict[str, str]]
    trials: list[TrialSummary]
    best: list[TrialSummary]  # one trial, or the Pareto set when there are several objectives
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    experiment_path: str

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for trial in self.trials:
            counts[trial.state] = counts.get(trial.state, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts()}


@dataclass(frozen=True)
class SweepRecord:
    """What a sweep's storage directory remembers so that `resume NAME` needs nothing else."""

    sweep: str
    spec: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    data_root: str | None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- entry points


def run_sweep(
    spec: SweepSpec,
    options: DriverOptions | None = None,
    *,
    on_trial: TrialHook | None = None,
    should_stop: StopFlag | None = None,
    limits: Limits | None = None,
    sweep_name: str | None = None,
    on_start: StartHook | None = None,
) -> SweepOutcome:
    """Run ``spec`` to the end (or until ``should_stop()``), and return what it found.

    ``sweep_name`` (default: the spec's name) names the Tune experiment directory, the MLflow
    parent run and the trials; `resume_sweep` takes the same name. ``on_start(record)`` is
    called once the MLflow parent run exists, before the first trial.
    """
    options = options or DriverOptions()
    name = sweep_name or spec.name
    if not SWEEP_NAME.match(name):
        raise ValueError(f"sweep name {name!r} must match {SWEEP_NAME.pattern}")
    settings = SweepSettings()
    limits = limits or Limits.from_settings(settings)
    issues = list(semantic_issues(spec, limits))
    if issues:
        raise SpecError(issues)
    tracking_uri = options.tracking_uri or settings.resolved_tracking_uri()
    path = experiment_path(options, settings, name)
    if has_state(path):
        raise SweepExistsError(
            f"sweep {name!r} already has state at {path}; continue it with "
            f"`python -m sweeps resume {name}` or give the spec another name"
        )
    tracker = Tracker(tracking_uri)
    experiment_id = tracker.experiment_id(spec.experiment)
    parent = tracker.open_parent(
        experiment_id, name, _parent_params(spec), _parent_tags(spec), spec.description
    )
    tracker.log_text(parent, dump_spec(spec), "spec.yaml")
    record = SweepRecord(
        sweep=name,
        spec=spec.to_document(),
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        data_root=str(limits.data_root) if limits.data_root else None,
    )
    _write_record(path, record)
    if on_start is not None:
        on_start(record)
    with ray_session(options.ray_address or settings.ray_address):
        tuner = tune.Tuner(
            _trainable(spec, record),
            tune_config=_tune_config(spec, name),
            run_config=_run_config(spec, path),
        )
        return _drive(tuner, spec, record, path, options, on_trial, should_stop)


def resume_sweep(
    name: str,
    options: DriverOptions | None = None,
    *,
    on_trial: TrialHook | None = None,
    should_stop: StopFlag | None = None,
    on_start: StartHook | None = None,
) -> SweepOutcome:
    """Continue sweep ``name`` from its saved Tune state; finished trials are not re-run."""
    options = options or DriverOptions()
    settings = SweepSettings()
    path = experiment_path(options, settings, name)
    record = _read_record(path)
    if record is None or not tune.Tuner.can_restore(path):
        raise FileNotFoundError(
            f"no sweep {name!r} to resume under {PurePosixPath(path).parent} (none started, or "
            "it stopped before Tune saved any state: run it again)"
        )
    if options.tracking_uri and options.tracking_uri != record.tracking_uri:
        raise ValueError(
            f"sweep {name!r} records to {record.tracking_uri}; resume it there, not at "
            f"{options.tracking_uri}"
        )
    spec = SweepSpec.model_validate(record.spec)
    tracker = Tracker(record.tracking_uri)
    tracker.client.update_run(record.parent_run_id, status="RUNNING")
    if on_start is not None:
        on_start(record)
    with ray_session(options.ray_address or settings.ray_address):
        tuner = tune.Tuner.restore(
            path,
            trainable=_trainable(spec, record),
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
        return _drive(tuner, spec, record, path, options, on_trial, should_stop)


def has_state(path: str) -> bool:
    """Whether an earlier run of the sweep at ``path`` left state that `resume_sweep` can use."""
    return _read_record(path) is not None and tune.Tuner.can_restore(path)


def experiment_path(options: DriverOptions, settings: SweepSettings, name: str) -> str:
    if options.storage_path:
        storage = absolute_storage(options.storage_path)
    else:
        storage = settings.resolved_storage_path()
    return f"{storage.rstrip('/')}/{name}"


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Use the Ray instance already up in this process, or start one for the sweep."""
    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address)
    else:
        # "local" always starts a fresh instance; a plain init() may join a stale one.
        ray.init(address="local", include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


# ---------------------------------------------------------------- Tune pieces


def _trainable(spec: SweepSpec, record: SweepRecord) -> Any:
    context = TrialContext(
        spec=record.spec,
        sweep=record.sweep,
        tracking_uri=record.tracking_uri,
        experiment_id=record.experiment_id,
        parent_run_id=record.parent_run_id,
        data_root=record.data_root,
    )
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.with_resources(tune.with_parameters(run_trial, context=context), resources)


def _tune_config(spec: SweepSpec, sweep: str) -> tune.TuneConfig:
    metrics = [o.metric for o in spec.objectives]
    modes = [o.mode for o in spec.objectives]
    searcher = OptunaSearch(
        space=SearchSpace(spec),
        metric=metrics if spec.multi_objective else metrics[0],
        mode=modes if spec.multi_objective else modes[0],
        points_to_evaluate=[dict(p) for p in spec.search.initial_points] or None,
        sampler=make_sampler(spec),
    )
    return tune.TuneConfig(
        search_alg=searcher,
        scheduler=_scheduler(spec),
        num_samples=spec.budget.max_trials,
        max_concurrent_trials=spec.budget.max_concurrent_trials,
        time_budget_s=spec.budget.time_budget_s,
        # Measured here: 8 small trials took 28 s with new actors and 9 s with reused ones.
        reuse_actors=True,
        trial_name_creator=functools.partial(_trial_name, sweep),
        trial_dirname_creator=functools.partial(_trial_name, sweep),
    )


def _trial_name(sweep: str, trial: Any) -> str:
    return f"{sweep}-{trial.trial_id.rsplit('_', 1)[-1]}"


def _scheduler(spec: SweepSpec) -> TrialScheduler:
    stopping = spec.early_stopping
    if stopping.kind == "none":
        return FIFOScheduler()
    first = spec.objectives[0]
    metric = stopping.metric or first.metric
    goal = stopping.goal or (
        first.goal if metric == first.metric else Objective(metric=metric).goal
    )
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=metric,
        mode="min" if goal == "minimize" else "max",
        max_t=stopping.max_t or max_epochs(spec),
        grace_period=stopping.grace_period,
        reduction_factor=stopping.reduction_factor,
    )


def _run_config(spec: SweepSpec, path: str) -> tune.RunConfig:
    storage, sweep = path.rsplit("/", 1)
    return tune.RunConfig(
        name=sweep,
        storage_path=storage,
        failure_config=tune.FailureConfig(max_failures=spec.fault_tolerance.max_retries_per_trial),
        # Tune keeps every checkpoint; the pruner deletes them once no saved state names them.
        callbacks=[SweepCallback(sweep, spec), JsonLoggerCallback(), CheckpointPruner()],
        stop=FailedTrialsStopper(sweep),
        verbose=0,
    )


# ---------------------------------------------------------------- running and summing up


def _drive(
    tuner: tune.Tuner,
    spec: SweepSpec,
    record: SweepRecord,
    path: str,
    options: DriverOptions,
    on_trial: TrialHook | None,
    should_stop: StopFlag | None,
) -> SweepOutcome:
    tracker = Tracker(record.tracking_uri)
    monitor = SweepMonitor(
        sweep=record.sweep,
        objectives=list(spec.objectives),
        max_trials=spec.budget.max_trials,
        on_trial=on_trial,
        should_stop=should_stop,
        stop_poll_s=options.stop_poll_s,
        max_failed_trials=spec.budget.max_failed_trials,
        stream=None if options.quiet else (options.stream or sys.stderr),
        states=_read_json(path, STATES_FILE) or {},
        persist=functools.partial(_write_json, path, STATES_FILE),
        on_result=functools.partial(_close_ended_run, tracker, spec, record),
    )
    register(monitor)
    try:
        with stop_on_signals(monitor):
            grid = tuner.fit()
    except BaseException as error:
        summary = {"status": "failed", "reason": f"driver error: {error!r}"}
        tracker.finish_parent(record.parent_run_id, "FAILED", summary, {})
        raise
    finally:
        unregister(record.sweep)
    outcome = _outcome(spec, record, path, grid, monitor)
    _close_unfinished_runs(tracker, record, outcome)
    tracker.finish_parent(
        record.parent_run_id,
        MLFLOW_STATUS[outcome.status],
        _summary(outcome),
        _best_metrics(outcome),
    )
    return outcome


def _close_unfinished_runs(tracker: Tracker, record: SweepRecord, outcome: SweepOutcome) -> None:
    """Mark every trial run still open once Tune has returned: none of them is running now.

    Tune's trials that did not finish (a stopped sweep) are resumable. A run whose trial Tune
    does not know was opened by a driver killed before Tune saved that trial: it is lost.
    """
    known = {t.trial_id for t in outcome.trials}
    for run_id, trial_id in tracker.running_trials(
        record.experiment_id, record.parent_run_id
    ).items():
        if trial_id in known:
            tracker.close_trial(run_id, "KILLED", "interrupted")
        else:
            tracker.close_trial(run_id, "KILLED", "interrupted", LOST_TRIAL_RUN)


def _close_ended_run(
    tracker: Tracker,
    spec: SweepSpec,
    record: SweepRecord,
    event: TrialEvent,
    result: dict[str, Any],
) -> None:
    """Close the MLflow run of a trial that could not close it itself.

    A trial that ASHA stops is ended inside Tune's report call and its actor may go at once;
    a trial whose process died never reached its own error handler.
    """
    if event.state not in ("stopped", "failed"):
        return
    run_id = event.mlflow_run_id or tracker.find_trial(
        record.experiment_id, record.parent_run_id, event.trial_id
    )
    if run_id is None:
        return  # it died before it opened a run: nothing to close
    if event.state == "stopped":
        bins = result.get(BINS_KEY)
        label = spec.method or str(event.params.get("method", ""))
        tracker.log_outcome(
            run_id,
            event.metrics,
            ReliabilityBins.from_dict(bins) if bins else None,
            label,
            spec.tracking.log_reliability_diagram,
        )
        tracker.close_trial(run_id, "FINISHED", "stopped")
    elif tracker.client.get_run(run_id).info.status == "RUNNING":
        tracker.close_trial(run_id, "FAILED", "failed", event.error)


def _outcome(
    spec: SweepSpec, record: SweepRecord, path: str, grid: Any, monitor: SweepMonitor
) -> SweepOutcome:
    trials = [_trial_summary(spec, result, monitor) for result in grid]
    trials.sort(key=lambda t: t.name)
    unfinished = [t for t in trials if t.state == "interrupted"]
    failed = [t for t in trials if t.state == "failed"]
    if unfinished or monitor.stop_requested:
        status, reason = "stopped", f"interrupted with {len(unfinished)} trial(s) unfinished"
    elif monitor.failed_too_often:
        status = "failed"
        allowed = spec.budget.max_failed_trials
        reason = f"{len(failed)} trials failed (budget.max_failed_trials={allowed})"
    elif trials and len(failed) == len(trials):
        status, reason = "failed", "every trial failed"
    elif not trials:
        status, reason = "failed", "no trial ran (time budget too small?)"
    else:
        status, reason = (
            "succeeded",
            f"{len(trials) - len(failed)} of {len(trials)} trials finished",
        )
    return SweepOutcome(
        sweep=record.sweep,
        status=status,
        reason=reason,
        objectives=[{"metric": o.metric, "goal": str(o.goal)} for o in spec.objectives],
        trials=trials,
        best=best_trials(spec.objectives, trials),
        experiment_id=record.experiment_id,
        parent_run_id=record.parent_run_id,
        tracking_uri=record.tracking_uri,
        experiment_path=path,
    )


def _trial_summary(spec: SweepSpec, result: Any, monitor: SweepMonitor) -> TrialSummary:
    metrics = dict(result.metrics or {})
    trial_id = str(metrics.get("trial_id") or PurePosixPath(result.path).name)
    params = dict(result.config or {})
    if result.error is not None:
        state = "failed"
    elif "epoch" in metrics and metrics["epoch"] >= trial_config(spec, params).epochs:
        state = "succeeded"
    elif monitor.states.get(trial_id) == "stopped":
        state = "stopped"  # cut short by ASHA (or the time budget); Tune will not resume it
    else:
        state = "interrupted"
    name = PurePosixPath(result.path).name
    error = None
    if result.error is not None:
        lines = [line for line in str(result.error).strip().splitlines() if line.strip()]
        error = lines[-1] if lines else repr(result.error)
    return TrialSummary(
        trial_id=trial_id,
        name=name,
        state=state,
        params=params,
        metrics=reported_metrics(metrics),
        mlflow_run_id=metrics.get(RUN_ID_KEY),
        error=error,
    )


def best_trials(objectives: list[Objective], trials: list[TrialSummary]) -> list[TrialSummary]:
    """The best trial for one objective; the Pareto set (non-dominated trials) for several."""
    scored = [
        t
        for t in trials
        if t.state in ("succeeded", "stopped")
        and all(math.isfinite(t.metrics.get(o.metric, math.nan)) for o in objectives)
    ]
    signs = [1.0 if o.goal == "minimize" else -1.0 for o in objectives]

    def losses(trial: TrialSummary) -> list[float]:
        return [s * trial.metrics[o.metric] for s, o in zip(signs, objectives, strict=True)]

    if len(objectives) == 1:
        return sorted(scored, key=losses)[:1]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    return sorted(
        (t for t in scored if not any(dominates(losses(o), losses(t)) for o in scored)),
        key=losses,
    )


def _summary(outcome: SweepOutcome) -> dict[str, Any]:
    data = outcome.to_dict()
    data.pop("tracking_uri")
    return data


def _best_metrics(outcome: SweepOutcome) -> dict[str, float]:
    if len(outcome.best) != 1:
        return {"pareto_size": float(len(outcome.best))}
    best = outcome.best[0]
    return {f"best_{k}": v for k, v in best.metrics.items() if k != "epoch"}


def _parent_params(spec: SweepSpec) -> dict[str, Any]:
    params: dict[str, Any] = {
        "dataset": spec.dataset.name,
        "model": spec.model.name,
        "methods": ",".join(spec.methods),
        "objectives": ",".join(f"{o.metric}:{o.goal}" for o in spec.objectives),
        "search": spec.search.algorithm,
        "early_stopping": spec.early_stopping.kind,
        "max_trials": spec.budget.max_trials,
        "searched": ",".join(spec.parameters),
    }
    params.update({f"fixed.{k}": v for k, v in spec.fixed.items()})
    return params


def _parent_tags(spec: SweepSpec) -> dict[str, str]:
    return {"gradreg.tags": ",".join(spec.tags)} if spec.tags else {}


# ---------------------------------------------------------------- the sweep's record file


def _filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    return (
        pyarrow.fs.FileSystem.from_uri(path)
        if "://" in path
        else (
            pyarrow.fs.LocalFileSystem(),
            path,
        )
    )


def _write_record(path: str, record: SweepRecord) -> None:
    _write_json(path, SWEEP_FILE, asdict(record))


def _read_record(path: str) -> SweepRecord | None:
    data = _read_json(path, SWEEP_FILE)
    return SweepRecord(**data) if data is not None else None


def _write_json(path: str, file_name: str, data: Any) -> None:
    fs, fs_path = _filesystem(path)
    fs.create_dir(fs_path, recursive=True)
    with fs.open_output_stream(f"{fs_path}/{file_name}") as out:
        out.write(json.dumps(data, indent=2).encode())


def _read_json(path: str, file_name: str) -> Any:
    fs, fs_path = _filesystem(path)
    target = f"{fs_path}/{file_name}"
    if fs.get_file_info(target).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(target) as handle:
        return json.loads(handle.read().decode())
