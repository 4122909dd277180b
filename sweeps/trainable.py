"""One trial: gradreg.fit, a Tune report and an MLflow record after every epoch."""

from __future__ import annotations

import functools
import logging
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

from gradreg.train import EpochReport, FitResult, fit
from sweeps._ray_compat import STORAGE_LOGGER, runtime_working_dir
from sweeps.code import bundle_code_paths
from sweeps.placement import Placement, device_tags, reported, trial_device
from sweeps.records import BINS_KEY, PLACEMENT_KEY, RUN_ID_KEY, trial_number
from sweeps.spec import SweepSpec
from sweeps.spec.resolve import early_stopping_target, trial_config
from sweeps.tracking import CODE_DIGEST_TAG, RESUMED_TAG, Tracker, trial_run_name

STATE_FILE = "state.pt"
FLUSH_INTERVAL_S = 2.0


class Pacer:
    """Says when ``interval_s`` seconds have passed since it last said so (or was made)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.last = clock()

    def due(self) -> bool:
        now = self.clock()
        if now - self.last < self.interval_s:
            return False
        self.last = now
        return True

    def restart(self) -> None:
        self.last = self.clock()


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares; plain data, so Ray can ship and Tune can pickle it."""

    spec: SweepSpec  # checked once, by the driver
    sweep: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    data_root: str | None
    # Tags on every trial run (`DriverOptions.run_tags`). A default, so that contexts pickled
    # in Tune's state before it existed still load.
    run_tags: tuple[tuple[str, str], ...] = ()


@functools.lru_cache(maxsize=4)
def trial_tracker(tracking_uri: str) -> Tracker:
    """One MLflow client per tracking URI in a trial's process: Tune reuses the process for the
    sweep's next trials, and a new client cost each of them tens of milliseconds (issue 29)."""
    return Tracker(tracking_uri)


class CheckpointStorageError(OSError):
    """A checkpoint that did not reach Tune's storage: the trial fails, naming the storage."""


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Tune function trainable. ``config`` holds only the searched values."""
    # One line per checkpoint from Ray's storage layer is noise in the driver's output.
    logging.getLogger(STORAGE_LOGGER).setLevel(logging.WARNING)
    spec = context.spec
    data_root = Path(context.data_root) if context.data_root else None
    train = trial_config(spec, config, data_root)
    # Concurrent trials on one host each get their share of cores, not all of them.
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    tune_context = tune.get_context()
    tracker = trial_tracker(context.tracking_uri)
    label = spec.method or config.get("method", "")
    tune_name = tune_context.get_trial_name()
    run = tracker.open_trial(
        context.experiment_id,
        context.parent_run_id,
        context.sweep,
        tune_context.get_trial_id(),
        tune_name,
        {**_settings_summary(train.to_dict()), **config},
        run_name=trial_run_name(spec.name, trial_number(tune_name), label),
        tags=dict(context.run_tags),
    )
    resume = _load_checkpoint()
    if resume is not None:
        # Where a retry picked up: how a user (and the cluster tests) tell a resumed trial from
        # one that began again.
        tracker.set_tags(run.run_id, {RESUMED_TAG: str(int(resume["epoch"]))})
    every = spec.fault_tolerance.checkpoint_every_epochs
    epochs = EpochLog(tracker, run.run_id)
    # Each report to Tune waits for the driver to take it (about 6 ms here, issue 29); between
    # checkpoints, progress every interval is enough. Early stopping ranks every epoch.
    reports = Pacer(0.0 if early_stopping_target(spec) else spec.tracking.progress_interval_s)
    placed: dict[str, Any] = {}  # where the trial runs, once its device is settled (below)

    def on_epoch(report: EpochReport) -> None:
        if report.epoch > run.logged_through_epoch:
            epochs.add(report.epoch, report.metrics)
        # The bins travel with the report: if ASHA ends the trial here, the driver draws them.
        metrics = {
            **report.metrics,
            RUN_ID_KEY: run.run_id,
            BINS_KEY: report.test_bins.to_dict(),
            PLACEMENT_KEY: placed,
        }
        if report.epoch % every and report.epoch != train.epochs:
            if reports.due():
                tune.report(metrics)
            return
        reports.restart()
        # A retry restarts after this checkpoint, so MLflow must hold every epoch up to it.
        epochs.flush()
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(report.state_dict(), Path(tmp, STATE_FILE))
            try:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
            except OSError as error:  # pyarrow's: the bucket or disk did not take it
                message = f"could not save epoch {report.epoch}'s checkpoint to Tune's storage"
                raise CheckpointStorageError(f"{message}: {error}") from error

    try:
        # Where it runs, first: a node that cannot give the device asked for fails here, and
        # its run still says which node it was. One write for all these tags (issue 29).
        placement = Placement.here()
        tags = placement.tags()
        code_paths: list[str] = []
        try:
            device, warning = trial_device(train.device, spec.resources.gpu, placement)
            tags.update(device_tags(device, warning))
            if spec.code.digest is not None:
                # The bundle this trial runs: Ray made it the process's working directory
                # (before Tune moved into the trial's), and the logged model carries its modules
                # (code_paths), so that it loads where they are not installed.
                tags[CODE_DIGEST_TAG] = spec.code.digest
                code_paths = bundle_code_paths(
                    runtime_working_dir(), train.entry_points, spec.code.digest
                )
        finally:
            tracker.set_tags(run.run_id, tags)
        placed.update(reported(placement, device))
        if warning:
            logging.getLogger(__name__).warning("%s: %s", tune_name, warning)
        # The dataset is the run's input from the start: a trial that fails still names it.
        data_logged = functools.partial(tracker.log_dataset, run.run_id)
        result = fit(train, on_epoch, resume=resume, on_data=data_logged)
        epochs.flush()
        # A trial whose files did not all reach MLflow has not succeeded: it fails below.
        _log_outcome(tracker, context, run.run_id, result, label, code_paths)
    except SystemExit:
        # Tune ends a trial at a report by raising SystemExit there (ASHA, a sweep stop). The
        # actor may be torn down at once, so the driver closes the run (Tracker.close_ended_run).
        epochs.flush()
        raise
    except BaseException as error:
        epochs.flush()
        message = "".join(traceback.format_exception_only(type(error), error)).strip()
        tracker.close_trial(run.run_id, "FAILED", "failed", message)
        raise
    tracker.close_trial(run.run_id, "FINISHED", "succeeded")


def _log_outcome(
    tracker: Tracker,
    context: TrialContext,
    run_id: str,
    result: FitResult,
    label: str,
    code_paths: list[str],
) -> None:
    """The finished trial's files: metrics, diagram, predictions, weights and its model."""
    spec = context.spec
    with tempfile.TemporaryDirectory() as tmp:
        state_file = None
        if spec.tracking.log_checkpoints:
            state_file = Path(tmp, STATE_FILE)
            torch.save(result.posterior.state_dict(), state_file)
        tracker.log_outcome(
            run_id,
            result.metrics,
            result.test_bins,
            label,
            _diagram(spec),
            state_file,
            predictions=result.predictions if spec.ensemble.size else None,
            temperature_scaling=result.temperature.reason if result.temperature else None,
        )
    if spec.tracking.log_model:
        from sweeps.model import log_model  # MLflow's model code: 0.5 s the driver need not pay

        saved = result.saved()
        log_model(
            context.tracking_uri,
            run_id,
            saved,
            saved.inputs.example,
            code_paths=code_paths,
            requirements=spec.code.requirements,
            experiment_id=context.experiment_id,
        )


class EpochLog:
    """Per-epoch metrics for MLflow, written at most every ``interval_s`` seconds.

    One SQLite write costs 10-20 ms on a busy 2-core host, as much as a small epoch; batching
    keeps MLflow a second or two behind instead of doubling the trial's time.
    """

    def __init__(
        self,
        tracker: Tracker,
        run_id: str,
        interval_s: float = FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.tracker = tracker
        self.run_id = run_id
        self.pacer = Pacer(interval_s, clock)
        self.pending: list[tuple[int, dict[str, float]]] = []

    def add(self, epoch: int, metrics: dict[str, float]) -> None:
        self.pending.append((epoch, metrics))
        if self.pacer.due():
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.tracker.log_epochs(self.run_id, self.pending)
            self.pending = []
        self.pacer.restart()


def _diagram(spec: SweepSpec) -> bool:
    return spec.tracking.log_reliability_diagram


def _load_checkpoint() -> dict[str, Any] | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return torch.load(Path(directory, STATE_FILE), map_location="cpu", weights_only=True)


def _settings_summary(settings: dict[str, Any]) -> dict[str, Any]:
    """The trial's full training settings, flattened for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif value is not None:
            flat[key] = value
    return flat
