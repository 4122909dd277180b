"""One concept, orchestration: running a sweep on Ray Tune's Tuner with Optuna and ASHA.

`run_sweep(spec)` starts one; `resume_sweep(name)` continues one that was interrupted (its
finished trials are kept, never re-run). Both accept the hooks the service needs: a per-trial
callback and a cooperative stop flag, checked by the driver between Tune steps. This module
only orchestrates: the MLflow rules are in `sweeps.tracking`, how a sweep ended in
`sweeps.outcome`, what follows Tune (ensemble, registration, importances) in `sweeps.postrun`,
and the files beside Tune's state in `sweeps.statefiles`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TextIO, TypedDict

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from gradreg import settings as gradreg_settings

# Their version checks, before anything starts (sweeps.tested_versions).
from sweeps import _optuna_compat, _ray_compat  # noqa: F401
from sweeps._ray_compat import LatestResultLogger, searcher_study
from sweeps.checkpoints import (
    CheckpointPruner,
    adaptive_state_saves,
    deletions_finished,
    searcher_follows_moved_experiment,
)
from sweeps.code import CodeBundle, runtime_env
from sweeps.ensemble import SweepEnsemble
from sweeps.live_budget import BudgetLimiter
from sweeps.outcome import sweep_outcome
from sweeps.postrun import AfterTune, rebuild_ensemble
from sweeps.preflight import (
    PreflightOutcome,
    describe_reports,
    needs_preflight,
    run_preflight,
)
from sweeps.progress import (
    BudgetHook,
    FailedTrialsStopper,
    SweepCallback,
    SweepMonitor,
    register,
    stop_on_signals,
    unregister,
)
from sweeps.records import (
    SWEEP_NAME,
    StopFlag,
    SweepOutcome,
    SweepRecord,
    TrialHook,
    trial_name,
)
from sweeps.settings import SweepSettings, absolute_storage, absolute_tracking_uri
from sweeps.space import SearchSpace, make_sampler
from sweeps.spec import CodeSection, SweepSpec
from sweeps.spec.budget import budget_changes, describe_changes, extended
from sweeps.spec.checks import admitted
from sweeps.spec.limits import Limits
from sweeps.spec.parse import validate_shape
from sweeps.spec.resolve import early_stopping_target, max_epochs, tune_metrics
from sweeps.statefiles import (
    STATES_FILE,
    experiment_path,
    has_state,
    read_bundle,
    read_json,
    read_record,
    read_reports,
    write_bundle,
    write_json,
    write_record,
    write_report,
)
from sweeps.study import (
    StudyPlace,
    attached,
    check_resumable,
    make_searcher,
    resumed_place,
    study_place,
)
from sweeps.tracking import Tracker
from sweeps.trainable import TrialContext, run_trial
from sweeps.tune_results import TuneResultTrimmer, compact_saves
from sweeps.warm_start import read_sources, seed_study

if TYPE_CHECKING:
    from typing import Unpack

# Tune's settings for every sweep (environment variables it reads; set unless already set).
TUNE_ENV = {
    # Short trials checkpoint often; Tune's "snapshotting too often" warning is noise for them.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Tune's newer console output prints a banner and tables on stdout even at verbose=0;
    # the driver prints its own progress (stderr) and report (stdout, possibly JSON).
    "RAY_AIR_NEW_OUTPUT": "0",
    # MLflow holds the metrics for people; Tune needs only its result.json (tune_callbacks).
    # Its CSV and TensorBoard loggers took 7 ms of the driver's loop per report.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # The driver turns Ctrl-C into its own stop request (sweeps.progress.stop_on_signals).
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # How stale the experiment state a killed driver leaves can be: work done after the last
    # save is done again on resume. "auto" with `adaptive_state_saves`: every second, or so
    # that saves take at most 5% of the loop once a sweep holds enough trials (Tune's own auto
    # waits at least 10 s).
    "TUNE_GLOBAL_CHECKPOINT_S": "auto",
    # A trial's model is saved and read back once at its end: a progress bar per file is noise.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

StartHook = Callable[[SweepRecord], None]


class SweepHooks(TypedDict, total=False):
    """How a caller (the service's store) follows a sweep and stops it; each may be left out.

    ``on_trial(event)`` hears every trial event; ``should_stop()`` is asked between Tune's steps,
    at most every ``DriverOptions.stop_poll_s``, and True stops the sweep so that it can be
    resumed; ``on_start(record)`` is called once the MLflow parent run exists, before the first
    trial; ``budget()`` gives the budget in force (`sweeps.live_budget`), asked as often as
    ``should_stop``: a change applies before the next trial starts.
    """

    on_trial: TrialHook | None
    should_stop: StopFlag | None
    on_start: StartHook | None
    budget: BudgetHook | None


def _check_hooks(function: str, hooks: Mapping[str, object]) -> None:
    """Refuse a keyword that is no hook (a typo would otherwise go unheard)."""
    unknown = sorted(set(hooks) - SweepHooks.__optional_keys__)
    if unknown:
        accepted = ", ".join(sorted(SweepHooks.__optional_keys__))
        raise TypeError(
            f"{function}() got an unexpected keyword argument {', '.join(map(repr, unknown))}; "
            f"its hooks are {accepted}"
        )


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
    # The Optuna study: "memory" or an SQLAlchemy URL; None: GRADREG_STUDY_STORAGE, else the
    # rules in sweeps.study. `run_stored` sets store_url to a store's database (the service's).
    study_storage: str | None = None
    store_url: str | None = None
    # The user's code bundle that this driver ships to every trial, as the Ray runtime
    # environment it starts or joins Ray with (`python -m sweeps run --code DIR`; on resume,
    # the bundle kept beside Tune's state: `stored_bundle`). None when the trials get the code
    # otherwise: the Ray Job this driver runs in carries it (the service), or it is installed
    # in the workers' environment.
    code: CodeBundle | None = None
    # Tags on the sweep's parent run and every trial run, such as who owns the sweep
    # (the service's ``gradreg.owner``).
    run_tags: tuple[tuple[str, str], ...] = ()
    # Whether a finished trial's process is kept for the next (Tune's reuse_actors; fixed when
    # the sweep starts, kept on resume). Tune keeps a finished trial's actor, and the resources
    # it holds, while its searcher waits, which is what a lowered concurrency or allowance
    # makes it do: on a cluster shared with other sweeps (the service) those resources are
    # theirs, and a raised allowance was found filled only in part. Off there.
    reuse_actors: bool = True

    def experiment_path(self, settings: SweepSettings, name: str) -> str:
        storage = (
            absolute_storage(self.storage_path)
            if self.storage_path
            else settings.resolved_storage_path()
        )
        return experiment_path(storage, name)

    def study_place(self, settings: SweepSettings, name: str, path: str) -> StudyPlace:
        setting = self.study_storage or settings.study_storage
        return study_place(name, path, store_url=self.store_url, setting=setting)


# ---------------------------------------------------------------- entry points


def run_sweep(
    spec: SweepSpec,
    options: DriverOptions | None = None,
    *,
    limits: Limits | None = None,
    sweep_name: str | None = None,
    **hooks: Unpack[SweepHooks],
) -> SweepOutcome:
    """Run ``spec`` to the end (or until ``should_stop()``), and return what it found.

    ``sweep_name`` (default: the spec's name) names the Tune experiment directory, the MLflow
    parent run and the trials; `resume_sweep` takes the same name. ``hooks``: `SweepHooks`.
    """
    _check_hooks("run_sweep", hooks)
    options = options or DriverOptions()
    name = sweep_name or spec.name
    if not SWEEP_NAME.match(name):
        raise ValueError(f"sweep name {name!r} must match {SWEEP_NAME.pattern}")
    settings = SweepSettings()
    limits = limits or Limits.from_settings(settings)
    spec = admitted(spec, limits)
    if options.code is not None:
        spec = _with_bundle(spec, options.code)
    tracking_uri = absolute_tracking_uri(options.tracking_uri or settings.resolved_tracking_uri())
    path = options.experiment_path(settings, name)
    if has_state(path):
        raise SweepExistsError(
            f"sweep {name!r} already has state at {path}; continue it with "
            f"`python -m sweeps resume {name}` or give the spec another name"
        )
    sources = read_sources(spec, name, functools.partial(_source_place, options, settings))
    if options.code is not None:
        write_bundle(path, options.code)  # beside Tune's state, for every resume
    place = options.study_place(settings, name, path)
    extra: dict[str, Any] = {"study": place.recorded()}
    with attached(place):
        searcher, notes = make_searcher(place, path, **_optuna_search(spec))
        if sources is not None:
            warm_start = seed_study(searcher_study(searcher), spec, sources)
            extra["warm_start"] = warm_start.to_dict()
            notes.append(warm_start.describe())
        _say(options, *notes)
        tracker = Tracker(tracking_uri)
        experiment_id, parent = tracker.open_sweep(spec, name, dict(options.run_tags))
        tracker.tag_study(parent, place.shown, place.name, place.source)
        if "warm_start" in extra:
            tracker.log_warm_start(parent, extra["warm_start"])
        record = SweepRecord(
            sweep=name,
            spec=spec.to_document(),
            tracking_uri=tracking_uri,
            experiment_id=experiment_id,
            parent_run_id=parent,
            data_root=str(limits.data_root) if limits.data_root else None,
            extra=extra,
        )
        write_record(path, record)
        if (on_start := hooks.get("on_start")) is not None:
            on_start(record)
        with (
            _code_environment(path, spec, options.code) as environment,
            ray_session(options.ray_address or settings.ray_address, environment),
        ):
            tuner = tune.Tuner(
                _trainable(spec, record, options.run_tags),
                tune_config=_tune_config(spec, name, searcher, limits, options.reuse_actors),
                run_config=_run_config(spec, path),
            )
            return _drive(
                tuner, spec, record, path, options, hooks, place, resumed=False, moving=True
            )


def _source_place(
    options: DriverOptions, settings: SweepSettings, name: str
) -> tuple[str, StudyPlace]:
    """Where sweep ``name`` keeps its Tune state, and where its study would be."""
    path = options.experiment_path(settings, name)
    return path, options.study_place(settings, name, path)


def resume_sweep(
    name: str,
    options: DriverOptions | None = None,
    *,
    limits: Limits | None = None,
    extend: Mapping[str, Any] | None = None,
    **hooks: Unpack[SweepHooks],
) -> SweepOutcome:
    """Continue sweep ``name`` from its saved Tune state; finished trials are not re-run.

    The spec is checked again against today's caps (``limits``), under the data root the
    sweep was started with. ``extend`` raises its budget first (`sweeps.spec.budget.extended`:
    ``max_trials``, ``time_budget_s``, ``max_failed_trials``), so that a sweep that finished
    goes on with more trials, its study and MLflow parent run the same. ``hooks``:
    `SweepHooks`.
    """
    _check_hooks("resume_sweep", hooks)
    options = options or DriverOptions()
    settings = SweepSettings()
    path = options.experiment_path(settings, name)
    record = read_record(path)
    if record is None or not tune.Tuner.can_restore(path):
        raise FileNotFoundError(
            f"no sweep {name!r} to resume under {PurePosixPath(path).parent} (none started, or "
            "it stopped before Tune saved any state: run it again)"
        )
    given_uri = absolute_tracking_uri(options.tracking_uri) if options.tracking_uri else None
    if given_uri and given_uri != absolute_tracking_uri(record.tracking_uri):
        raise ValueError(
            f"sweep {name!r} records to {record.tracking_uri}; resume it there, not at "
            f"{options.tracking_uri}"
        )
    limits = limits or Limits.from_settings(settings)
    root = Path(record.data_root) if record.data_root else None
    spec = admitted(validate_shape(record.spec), limits.with_data_root(root))
    if extend:
        raised = extended(spec, extend, limits.with_data_root(root))
        changes = budget_changes(spec.budget, raised.budget)
        if changes:
            spec = raised
            history = [*record.extra.get("budget_changes", []), {"extend": changes}]
            extra = {**record.extra, "budget_changes": history}
            record = dataclasses.replace(record, spec=spec.to_document(), extra=extra)
            write_record(path, record)
            _say(options, f"budget: {describe_changes(changes)}")
    if options.code is not None and options.code.digest != spec.code.digest:
        raise ValueError(
            f"sweep {name!r} runs with the code bundle {spec.code.digest or '(none)'}; a resume "
            f"ships the same, not {options.code.digest} ({options.code.source}): resume without "
            "--code to use the bundle kept beside its state"
        )
    # The study where the sweep kept it: a persistent one is checked, then reconnected to.
    recorded = record.extra.get("study")
    check_resumable(place := options.study_place(settings, name, path), recorded)
    place = resumed_place(place, recorded)
    tracker = Tracker(record.tracking_uri)
    tracker.client.update_run(record.parent_run_id, status="RUNNING")
    tracker.tag_study(record.parent_run_id, place.shown, place.name, place.source)
    _say(options, place.describe())
    if (on_start := hooks.get("on_start")) is not None:
        on_start(record)
    with (
        _code_environment(path, spec, options.code) as environment,
        ray_session(options.ray_address or settings.ray_address, environment),
        attached(place),
    ):
        tuner = tune.Tuner.restore(
            path,
            trainable=_trainable(spec, record, options.run_tags),
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
        # A sweep started by this code has its budget in force in `BudgetLimiter` and Tune only
        # the ceilings; one started before (no limiter) has it in Tune's own settings.
        moving = isinstance(_ray_compat.restored_searcher(tuner), BudgetLimiter)
        budget = spec.budget
        total, concurrent = (
            _ceilings(spec, limits) if moving else (budget.max_trials, budget.max_concurrent_trials)
        )
        _ray_compat.set_time_budget(tuner, None if moving else budget.time_budget_s)
        with (
            searcher_follows_moved_experiment(path),
            _ray_compat.restored_with_budget(path, total, concurrent),
        ):
            return _drive(
                tuner, spec, record, path, options, hooks, place, resumed=True, moving=moving
            )


def stored_bundle(name: str, options: DriverOptions | None = None) -> CodeBundle | None:
    """The code bundle sweep ``name`` was started with, kept beside its Tune state (None for
    a sweep without one): what `python -m sweeps resume` ships again, whatever the code
    directory holds now."""
    options = options or DriverOptions()
    path = options.experiment_path(SweepSettings(), name)
    record = read_record(path)
    digest = (record.spec.get("code") or {}).get("digest") if record is not None else None
    if digest is None:
        return None
    bundle = read_bundle(path, digest)
    if bundle is None:
        raise FileNotFoundError(
            f"sweep {name!r} runs with the code bundle {digest}, which is not kept at "
            f"{path}/code (a sweep started by the service keeps it in the service's store)"
        )
    return bundle


def _with_bundle(spec: SweepSpec, bundle: CodeBundle) -> SweepSpec:
    """``spec`` with the bundle's digest in its code section (the record keeps it, so a
    resume ships the same bundle); a spec that names another bundle is refused, and so is
    code that would hide a module the trials import."""
    if spec.code.digest is not None and spec.code.digest != bundle.digest:
        raise ValueError(
            f"the spec's code.digest is {spec.code.digest}, but {bundle.source} packs to "
            f"{bundle.digest}: leave code.digest out to run the directory's code"
        )
    shadowed = [name for name in bundle.modules() if _taken(name)]
    if shadowed:
        raise ValueError(
            f"the code directory {bundle.source} provides {', '.join(map(repr, shadowed))}, "
            "which the trials already import from their environment (the standard library, "
            "gradreg and its dependencies): rename your module or package"
        )
    code = CodeSection(digest=bundle.digest, requirements=list(spec.code.requirements))
    return spec.model_copy(update={"code": code})


def _taken(name: str) -> bool:
    return name in sys.stdlib_module_names or name in sys.modules


@contextmanager
def _code_environment(
    path: str, spec: SweepSpec, bundle: CodeBundle | None
) -> Iterator[dict[str, Any] | None]:
    """The Ray runtime environment that ships ``bundle`` (and the spec's requirements) to
    every trial, or None without a bundle. Ray makes the bundle each worker's working
    directory, so every path the trials read from the environment is passed absolute."""
    if bundle is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        if "://" in path:  # a bucket: Ray uploads from a local file
            local = Path(tmp, bundle.file_name)
            local.write_bytes(bundle.data)
        else:
            local = Path(path, "code", bundle.file_name)
            if not local.is_file():
                write_bundle(path, bundle)
        settings = SweepSettings()
        env_vars = {
            gradreg_settings.DATA_DIR_ENV: str(gradreg_settings.data_dir()),
            gradreg_settings.CACHE_DIR_ENV: str(gradreg_settings.cache_dir().absolute()),
            "GRADREG_VAR_DIR": str(settings.var_dir.expanduser().absolute()),
        }
        yield runtime_env(local, spec.code.requirements, env_vars)


@contextmanager
def ray_session(
    address: str | None, environment: Mapping[str, Any] | None = None
) -> Iterator[None]:
    """Use the Ray instance already up in this process, or start (or join) one for the sweep,
    with ``environment`` as its jobs' runtime environment (a code bundle: `_code_environment`)."""
    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        if environment is not None:
            raise ValueError(
                "Ray is already running in this process, so the sweep cannot give it its code "
                "bundle as the runtime environment: call ray.shutdown() first, or run the "
                "sweep in a process of its own (python -m sweeps run --code DIR)"
            )
        yield
        return
    env = dict(environment) if environment is not None else None
    if address:
        ray.init(address=address, runtime_env=env)
    else:
        # "local" always starts a fresh instance; a plain init() may join a stale one.
        ray.init(address="local", include_dashboard=False, runtime_env=env)
    try:
        yield
    finally:
        ray.shutdown()


# ---------------------------------------------------------------- Tune pieces


def _trainable(
    spec: SweepSpec, record: SweepRecord, run_tags: tuple[tuple[str, str], ...] = ()
) -> Any:
    context = TrialContext(
        spec=spec,
        sweep=record.sweep,
        tracking_uri=record.tracking_uri,
        experiment_id=record.experiment_id,
        parent_run_id=record.parent_run_id,
        data_root=record.data_root,
        run_tags=run_tags,
    )
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.with_resources(tune.with_parameters(run_trial, context=context), resources)


def _optuna_search(spec: SweepSpec) -> dict[str, Any]:
    """OptunaSearch's arguments for ``spec``, but for its study (`sweeps.study.make_searcher`)."""
    metrics = [o.metric for o in spec.objectives]
    modes = [o.mode for o in spec.objectives]
    return {
        "space": SearchSpace(spec),
        "metric": metrics if spec.multi_objective else metrics[0],
        "mode": modes if spec.multi_objective else modes[0],
        "points_to_evaluate": [dict(p) for p in spec.search.initial_points] or None,
        "sampler": make_sampler(spec),
    }


def _ceilings(spec: SweepSpec, limits: Limits) -> tuple[int, int]:
    """Tune's trials in all and at once: the most a change to the budget may ask for."""
    budget = spec.budget
    return (
        max(limits.max_trials, budget.max_trials),
        max(limits.max_concurrent_trials, budget.max_concurrent_trials),
    )


def _tune_config(
    spec: SweepSpec, sweep: str, searcher: Searcher, limits: Limits, reuse_actors: bool = True
) -> tune.TuneConfig:
    total, concurrent = _ceilings(spec, limits)
    return tune.TuneConfig(
        # The budget in force is the limiter's (`sweeps.live_budget`); Tune's are ceilings.
        search_alg=BudgetLimiter(searcher, sweep),
        scheduler=_scheduler(spec),
        num_samples=total,
        max_concurrent_trials=concurrent,
        time_budget_s=None,
        # Measured here: 8 small trials took 28 s with new actors and 9 s with reused ones.
        reuse_actors=reuse_actors,
        trial_name_creator=functools.partial(_trial_name, sweep),
        trial_dirname_creator=functools.partial(_trial_name, sweep),
    )


def _trial_name(sweep: str, trial: Any) -> str:
    # Tune pickles this function (by this import path) into a sweep's saved state.
    number = trial.experiment_tag.split("_", 1)[0]  # Tune's count of the sweep's trials
    return trial_name(sweep, int(number) if number.isdigit() else None, trial.trial_id)


def _scheduler(spec: SweepSpec) -> TrialScheduler:
    target = early_stopping_target(spec)
    if target is None:
        return FIFOScheduler()  # type: ignore[no-untyped-call]  # Ray: no annotations
    stopping = spec.early_stopping
    metric, goal = target
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=metric,
        mode="min" if goal == "minimize" else "max",
        max_t=stopping.max_t or max_epochs(spec),
        grace_period=stopping.grace_period,
        reduction_factor=stopping.reduction_factor,
    )


def tune_callbacks(sweep: str, spec: SweepSpec) -> list[tune.Callback]:
    """The driver's callbacks into Tune's loop."""
    # In this order: SweepCallback reads each whole report before the trimmer cuts it to what
    # Tune needs, and the results file holds what Tune keeps. Tune keeps every checkpoint; the
    # pruner deletes them once no saved state names them.
    return [
        SweepCallback(sweep, spec),
        TuneResultTrimmer(tune_metrics(spec)),
        LatestResultLogger(),
        CheckpointPruner(),
    ]


def _run_config(spec: SweepSpec, path: str) -> tune.RunConfig:
    storage, sweep = path.rsplit("/", 1)
    return tune.RunConfig(
        name=sweep,
        storage_path=storage,
        failure_config=tune.FailureConfig(max_failures=spec.fault_tolerance.max_retries_per_trial),
        callbacks=tune_callbacks(sweep, spec),
        stop=FailedTrialsStopper(sweep),
        verbose=0,
    )


# ---------------------------------------------------------------- running


def _drive(
    tuner: tune.Tuner,
    spec: SweepSpec,
    record: SweepRecord,
    path: str,
    options: DriverOptions,
    hooks: SweepHooks,
    place: StudyPlace,
    *,
    resumed: bool,
    moving: bool,
) -> SweepOutcome:
    """Run ``tuner`` to its end and make the outcome; ``moving``: its searcher is wrapped in
    `BudgetLimiter`, so the monitor holds the budget in force and takes changes to it."""
    tracker = Tracker(record.tracking_uri)
    say = functools.partial(_say, options)
    reports = None
    if needs_preflight(spec):
        checked = run_preflight(
            spec,
            record.data_root,
            placement_timeout_s=SweepSettings().placement_timeout_s,
            should_stop=hooks.get("should_stop"),
            poll_s=options.stop_poll_s,
        )
        reports = list(checked.reports)
        if not checked.passed:
            return _refused(tuner, spec, record, path, tracker, checked, resumed=resumed)
        tracker.log_preflight(record.parent_run_id, checked.reports)
        say(*describe_reports(checked.reports))
    monitor = SweepMonitor(
        sweep=record.sweep,
        objectives=list(spec.objectives),
        max_trials=spec.budget.max_trials,
        on_trial=hooks.get("on_trial"),
        should_stop=hooks.get("should_stop"),
        stop_poll_s=options.stop_poll_s,
        max_failed_trials=spec.budget.max_failed_trials,
        stream=None if options.quiet else (options.stream or sys.stderr),
        states=read_json(path, STATES_FILE) or {},
        persist=functools.partial(write_json, path, STATES_FILE),
        keep_final=functools.partial(write_report, path),
        on_result=functools.partial(tracker.close_ended_run, spec, record),
        placement_timeout_s=SweepSettings().placement_timeout_s,
        budget=spec.budget if moving else None,
        read_budget=hooks.get("budget") if moving else None,
    )
    monitor.poll_budget()  # a change made while no driver ran applies from the first trial
    register(monitor)
    try:
        with (
            stop_on_signals(monitor),
            adaptive_state_saves(),
            deletions_finished(),
            compact_saves(),
        ):
            grid = tuner.fit()
        monitor.save_states()
    except BaseException as error:
        try:
            tracker.fail_sweep(record, error)
        except Exception as tracking_error:
            # The sweep's own error is what failed it; MLflow's (often the same lost bucket or
            # server) must not take its place in the job's ending.
            logging.getLogger(__name__).warning(
                "MLflow could not record that the sweep failed: %s", tracking_error
            )
        raise
    finally:
        unregister(record.sweep)
    outcome = sweep_outcome(
        spec,
        record,
        path,
        iter(grid),
        monitor.states,
        stop_requested=monitor.stop_requested,
        failed_too_often=monitor.failed_too_often,
        unplaceable=monitor.unplaceable,
        # This driver's trials from memory, an earlier driver's from their files.
        reports={**read_reports(path, skip=monitor.finals.keys()), **monitor.finals},
    )
    outcome = dataclasses.replace(outcome, preflight=reports)
    return AfterTune(tracker, spec, record, place, say)(outcome)


def _refused(
    tuner: tune.Tuner,
    spec: SweepSpec,
    record: SweepRecord,
    path: str,
    tracker: Tracker,
    checked: PreflightOutcome,
    *,
    resumed: bool,
) -> SweepOutcome:
    """The outcome of a sweep whose preflight failed (or was stopped): no trial started. A
    resumed sweep keeps the trials its saved state holds."""
    grid = tuner.get_results() if resumed else None
    results = [grid[i] for i in range(len(grid))] if grid is not None else []
    outcome = sweep_outcome(
        spec,
        record,
        path,
        results,
        read_json(path, STATES_FILE) or {},
        stop_requested=checked.stopped,
        failed_too_often=False,
        refused=checked.failure,
        reports=read_reports(path),
    )
    outcome = dataclasses.replace(outcome, preflight=list(checked.reports))
    tracker.log_preflight(record.parent_run_id, checked.reports, checked.failure)
    tracker.finish_sweep(outcome)
    return outcome


def _say(options: DriverOptions, *lines: str) -> None:
    if not options.quiet:
        print(*lines, sep="\n", file=options.stream or sys.stderr)


def ensemble_sweep(
    name: str,
    options: DriverOptions | None = None,
    *,
    size: int | None = None,
    selection: str | None = None,
) -> SweepEnsemble:
    """Build (again) the ensemble of a sweep that ran, from its trials in MLflow, and log it
    on its parent run (`sweeps.postrun.rebuild_ensemble`). ``size`` and ``selection`` replace
    the spec's ensemble settings."""
    options = options or DriverOptions()
    path = options.experiment_path(SweepSettings(), name)
    return rebuild_ensemble(path, size=size, selection=selection)
