"""One concept, every MLflow rule of a sweep: its parent run, one child run per Tune trial.

Every MLflow rule lives here: opening the sweep's parent run, a trial's run and its files,
closing the runs of trials that ended (or never will), and finishing the parent with the
outcome. Everything goes through an explicit `MlflowClient` (no fluent "active run"), because
with reused Ray actors one process runs many trials one after another. A trial's child run is
found again by its Tune trial id, so a retried or resumed trial continues its own run.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from mlflow import MlflowClient
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from gradreg.evaluation.metrics import ReliabilityBins
from gradreg.evaluation.svg import write_reliability_svg
from gradreg.train import Predictions
from sweeps.ensemble import PREDICTIONS_FILE, SweepEnsemble, encode_predictions
from sweeps.records import (
    BINS_KEY,
    LOST_TRIAL,
    SweepOutcome,
    SweepRecord,
    TrialEvent,
    TrialSummary,
)
from sweeps.spec import SweepSpec
from sweeps.spec.parse import dump_spec

if TYPE_CHECKING:
    from sweeps.importances import Importances

PARENT_RUN_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"
SWEEP_TAG = "gradreg.sweep"
# Who owns the sweep, where a service runs it for several users (`DriverOptions.run_tags`).
OWNER_TAG = "gradreg.owner"
ROLE_TAG = "gradreg.role"
TRIAL_TAG = "gradreg.trial_id"
TRIAL_NAME_TAG = "gradreg.trial_name"  # Tune's name of the trial; the run's own name is readable
ATTEMPT_TAG = "gradreg.attempt"
RESUMED_TAG = "gradreg.resumed_from_epoch"  # set by a retry that restored a checkpoint
STATUS_TAG = "gradreg.status"
# Why temperature scaling was not fitted (T left at 1; gradreg.evaluation.calibration says
# when): on a
# trial's run, from its final evaluation; on the parent run, from the sweep ensemble's.
TEMPERATURE_TAG = "gradreg.temperature_scaling"
ENSEMBLE_TEMPERATURE_TAG = "gradreg.ensemble_temperature_scaling"
ERROR_TAG = "gradreg.error"
PREFLIGHT_TAG = "gradreg.preflight"  # passed or failed; the parent run's preflight.json says more
PREFLIGHT_FILE = "preflight.json"
# Reliability diagrams as SVG, written without matplotlib (`gradreg.evaluation.svg`): every
# trial draws one, and matplotlib's PNG cost each about 80 ms (issue 29).
DIAGRAM_FILE = "reliability.svg"
ENSEMBLE_DIAGRAM_FILE = "ensemble_reliability.svg"
CODE_DIGEST_TAG = "gradreg.code_digest"  # the code bundle a trial trained with
MAX_TAG_LENGTH = 5000
MAX_PARAM_LENGTH = 6000
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch
MAX_SEARCH_RESULTS = 50_000  # MLflow's limit for one search_runs page
DATASET_CONTEXT_TAG = "mlflow.data.context"
DATASET_DIGEST_LENGTH = 16  # MLflow keeps at most 36 characters; the profile has it whole
MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}


@dataclass(frozen=True)
class TrialRun:
    run_id: str
    attempt: int
    logged_through_epoch: int  # epochs already logged by an earlier attempt


# MLflow's defaults (a 120 s timeout, 7 retries with exponential backoff) let a server that
# accepts connections and never answers hang a trial for hours; these bound a call to about
# 30 s × 3 plus a few seconds of backoff. Set MLFLOW_HTTP_REQUEST_* to choose others.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
# MLflow prints "View experiment at: <server>/#/experiments/<id>" whenever a run on a tracking
# server ends (every trial's): MLflow 3's UI opens that link on its GenAI overview, without the
# runs. The sweep's report prints `sweeps.mlflow_ui`'s links instead.
PRINT_DEFAULTS = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


class Tracker:
    def __init__(self, tracking_uri: str) -> None:
        for name, value in {**HTTP_DEFAULTS, **PRINT_DEFAULTS}.items():
            os.environ.setdefault(name, value)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)

    # ------------------------------------------------------------ experiment and parent

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created if missing."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise ValueError(
                    f"MLflow experiment {name!r} is deleted; restore it or set tracking.experiment"
                )
            return found.experiment_id
        return self.client.create_experiment(
            name,
            artifact_location=self._artifact_location(name),
            # MLflow 3's UI opens GenAI pages by default; these are training runs.
            tags={EXPERIMENT_KIND_TAG: "custom_model_development"},
        )

    def _artifact_location(self, experiment: str) -> str | None:
        """Artifacts beside a local database; a tracking server chooses its own."""
        parsed = urlparse(self.tracking_uri)
        if parsed.scheme != "sqlite":
            return None
        database = Path(self.tracking_uri.removeprefix("sqlite:///"))
        return (database.parent / "mlartifacts" / experiment).absolute().as_uri()

    def open_parent(
        self,
        experiment_id: str,
        sweep: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        description: str,
        run_name: str | None = None,
    ) -> str:
        """The sweep's parent run: a new one, or the one an interrupted run of it left.

        ``sweep`` (the sweep's id) is its tag; ``run_name`` (default: ``sweep``) what people read.
        """
        existing = self._find(
            experiment_id, f"tags.`{SWEEP_TAG}` = '{_quote(sweep)}' and tags.`{ROLE_TAG}` = 'sweep'"
        )
        if existing is not None:
            self.client.update_run(existing, status="RUNNING")
            return existing
        run_name = run_name or sweep
        run_tags = {RUN_NAME_TAG: run_name, SWEEP_TAG: sweep, ROLE_TAG: "sweep", **tags}
        if description:
            run_tags[NOTE_TAG] = description
        run = self.client.create_run(experiment_id, tags=run_tags, run_name=run_name)
        self.client.log_batch(run.info.run_id, params=_params(params))
        return run.info.run_id

    def finish_parent(
        self, run_id: str, status: str, summary: Mapping[str, Any], metrics: Mapping[str, float]
    ) -> None:
        """Record the sweep's outcome on its parent run and close it."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "sweep_summary.json")
            path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
            self.client.log_artifact(run_id, str(path))
        self.client.log_batch(run_id, metrics=_metrics(metrics, step=0))
        self.client.set_tag(run_id, STATUS_TAG, summary.get("status", ""))
        self.client.set_terminated(run_id, status=status)

    def log_text(self, run_id: str, text: str, file_name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, file_name)
            path.write_text(text)
            self.client.log_artifact(run_id, str(path))

    # ------------------------------------------------------------ a sweep's life

    def open_sweep(
        self, spec: SweepSpec, name: str, tags: Mapping[str, str] | None = None
    ) -> tuple[str, str]:
        """(experiment id, parent run id) of sweep ``name``; the spec goes on the parent, with
        ``tags``."""
        experiment_id = self.experiment_id(spec.experiment)
        parent = self.open_parent(
            experiment_id,
            name,
            _parent_params(spec),
            {**_parent_tags(spec), **(tags or {})},
            spec.description,
            run_name=spec.name,
        )
        self.log_text(parent, dump_spec(spec), "spec.yaml")
        return experiment_id, parent

    def finish_sweep(self, outcome: SweepOutcome) -> None:
        """The outcome on the parent run: its summary, the best trial's metrics, its status."""
        summary = outcome.to_dict()
        summary.pop("tracking_uri")
        self.finish_parent(
            outcome.parent_run_id, MLFLOW_STATUS[outcome.status], summary, _best_metrics(outcome)
        )

    def fail_sweep(self, record: SweepRecord, error: BaseException) -> None:
        """The driver itself failed: the parent run says so."""
        summary = {"status": "failed", "reason": f"driver error: {error!r}"}
        self.finish_parent(record.parent_run_id, "FAILED", summary, {})

    def close_unfinished_runs(self, record: SweepRecord, outcome: SweepOutcome) -> None:
        """Mark every trial run still open once Tune has returned: none of them is running now.

        Tune's trials that did not finish (a stopped sweep) are resumable. A run whose trial Tune
        does not know was opened by a driver killed before Tune saved that trial: it is lost.
        """
        known = {t.trial_id for t in outcome.trials}
        running = self.running_trials(record.experiment_id, record.parent_run_id)
        for run_id, trial_id in running.items():
            if trial_id in known:
                self.close_trial(run_id, "KILLED", "interrupted")
            else:
                self.close_trial(run_id, "KILLED", "interrupted", LOST_TRIAL)

    def close_ended_run(
        self, spec: SweepSpec, record: SweepRecord, event: TrialEvent, result: dict[str, Any]
    ) -> None:
        """Close the MLflow run of a trial that could not close it itself.

        A trial that ASHA stops is ended inside Tune's report call and its actor may go at once;
        a trial whose process died never reached its own error handler.
        """
        if event.state not in ("stopped", "failed"):
            return
        run_id = event.mlflow_run_id or self.find_trial(
            record.experiment_id, record.parent_run_id, event.trial_id
        )
        if run_id is None:
            return  # it died before it opened a run: nothing to close
        if event.state == "stopped":
            bins = result.get(BINS_KEY)
            label = spec.method or str(event.params.get("method", ""))
            self.log_outcome(
                run_id,
                event.metrics,
                ReliabilityBins.from_dict(bins) if bins else None,
                label,
                spec.tracking.log_reliability_diagram,
            )
            self.close_trial(run_id, "FINISHED", "stopped")
        elif self.client.get_run(run_id).info.status == "RUNNING":
            self.close_trial(run_id, "FAILED", "failed", event.error)

    # ------------------------------------------------------------ trials

    def open_trial(
        self,
        experiment_id: str,
        parent_run_id: str,
        sweep: str,
        trial_id: str,
        trial_name: str,
        params: Mapping[str, Any],
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> TrialRun:
        """The trial's child run; an earlier attempt's run is reopened, never duplicated.

        ``trial_id`` and ``trial_name`` (Tune's) are tags; ``run_name`` (default: the trial's
        name) is what the MLflow UI lists.
        """
        existing = self.find_trial(experiment_id, parent_run_id, trial_id)
        if existing is not None:
            run = self.client.get_run(existing)
            attempt = int(run.data.tags.get(ATTEMPT_TAG, "1")) + 1
            logged = self.client.get_metric_history(existing, "epoch")
            self.client.update_run(existing, status="RUNNING")
            self.client.set_tag(existing, ATTEMPT_TAG, str(attempt))
            self.client.set_tag(existing, STATUS_TAG, "running")
            return TrialRun(existing, attempt, max((int(m.value) for m in logged), default=0))
        run_name = run_name or trial_name
        tags = {
            PARENT_RUN_TAG: parent_run_id,
            RUN_NAME_TAG: run_name,
            SWEEP_TAG: sweep,
            ROLE_TAG: "trial",
            TRIAL_TAG: trial_id,
            TRIAL_NAME_TAG: trial_name,
            ATTEMPT_TAG: "1",
            STATUS_TAG: "running",
            **(tags or {}),
        }
        run = self.client.create_run(experiment_id, tags=tags, run_name=run_name)
        self.client.log_batch(run.info.run_id, params=_params(params))
        return TrialRun(run.info.run_id, 1, 0)

    def find_trial(self, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
        return self._find(
            experiment_id,
            f"tags.`{PARENT_RUN_TAG}` = '{_quote(parent_run_id)}' "
            f"and tags.`{TRIAL_TAG}` = '{_quote(trial_id)}'",
        )

    def log_epochs(self, run_id: str, epochs: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Several epochs' metrics in as few writes as MLflow's batch limit allows."""
        metrics = [m for step, values in epochs for m in _metrics(values, step)]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])

    def log_outcome(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        bins: ReliabilityBins | None,
        label: str,
        diagram: bool,
        state_file: Path | None = None,
        predictions: Mapping[str, Predictions] | None = None,
        temperature_scaling: str | None = None,
    ) -> None:
        """The trial's final files: metrics, reliability bins and diagram, its validation and
        test class probabilities (for the sweep ensemble), optional weights; and, when
        ``temperature_scaling`` says why T was not fitted, the `TEMPERATURE_TAG`."""
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            (out / "final_metrics.json").write_text(json.dumps(dict(metrics), indent=2) + "\n")
            if predictions:
                (out / PREDICTIONS_FILE).write_bytes(encode_predictions(predictions))
            if bins is not None:
                (out / "reliability_bins.json").write_text(json.dumps(bins.to_dict()) + "\n")
                if diagram:
                    write_reliability_svg(out / DIAGRAM_FILE, {label: bins})
            self.client.log_artifacts(run_id, str(out))
        if state_file is not None:
            self.client.log_artifact(run_id, str(state_file), artifact_path="checkpoint")
        self._tag_temperature(run_id, TEMPERATURE_TAG, temperature_scaling)

    def _tag_temperature(self, run_id: str, tag: str, reason: str | None) -> None:
        """``tag`` says why T was not fitted; where it was fitted, an earlier such tag goes (a
        retried trial, an ensemble built again)."""
        if reason is not None:
            self.client.set_tag(run_id, tag, reason[:MAX_TAG_LENGTH])
        elif tag in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, tag)

    def log_preflight(
        self, run_id: str, reports: Sequence[Mapping[str, Any]], failure: str | None = None
    ) -> None:
        """The preflight on the parent run: tags with the network's size and one step's
        memory (`sweeps.preflight.summary_tags`), or the failure; ``preflight.json`` with
        every report."""
        from sweeps.preflight import summary_tags

        if failure is not None:
            self.set_tags(run_id, {PREFLIGHT_TAG: "failed", ERROR_TAG: failure})
        else:
            self.set_tags(run_id, {PREFLIGHT_TAG: "passed", **summary_tags(reports)})
        document = {"passed": failure is None, "failure": failure, "reports": list(reports)}
        self.log_text(run_id, json.dumps(document, indent=2, default=str) + "\n", PREFLIGHT_FILE)

    def log_dataset(self, run_id: str, dataset: Mapping[str, Any]) -> None:
        """The trial's data as an MLflow dataset input (``dataset``: `Dataset.summary()`): a
        file's path and content digest, or a built-in set's name and options; its shape."""
        source = dict(dataset.get("source") or {"name": dataset["name"]})
        location: dict[str, Any]
        if "path" in source:
            name = Path(str(source["path"])).name
            source_type, location = "local", {"uri": str(source["path"])}
            digest = str(source.get("digest", ""))
        elif "entry_point" in source:  # a user's loader: the digest of the arrays it returned
            name = str(source["entry_point"])
            source_type, location = "code", {"tags": {"gradreg.dataset": name}}
            digest = str(source.get("digest", "")).removeprefix("sha256:")
        else:
            name = str(source.get("name", dataset["name"]))
            source_type, location = "code", {"tags": {"gradreg.dataset": name}}
            digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()
        profile = {k: v for k, v in dataset.items() if k not in ("source", "name")}
        entity = DatasetEntity(
            name=name,
            digest=digest[:DATASET_DIGEST_LENGTH],
            source_type=source_type,
            source=json.dumps(location),
            profile=json.dumps({**profile, "source": source}, default=str),
        )
        inputs = [DatasetInput(entity, tags=[InputTag(DATASET_CONTEXT_TAG, "training")])]
        try:
            self.client.log_inputs(run_id, datasets=inputs)
        except MlflowException:
            # Concurrent trials of a sweep insert the same dataset row at once and all but one
            # break its unique key; once it exists, logging links the run to it.
            self.client.log_inputs(run_id, datasets=inputs)

    def load_predictions(self, run_id: str) -> bytes | None:
        """A trial's ``predictions.npz``, or None if it wrote none."""
        if PREDICTIONS_FILE not in {a.path for a in self.client.list_artifacts(run_id)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(run_id, PREDICTIONS_FILE, tmp)).read_bytes()

    def log_ensemble(self, run_id: str, ensemble: SweepEnsemble) -> None:
        """The sweep ensemble on the parent run: ``ensemble_*`` metrics, its members and its
        test reliability diagram, and `ENSEMBLE_TEMPERATURE_TAG` when its T was not fitted."""
        metrics = {f"ensemble_{k}": v for k, v in ensemble.metrics.items()}
        metrics["ensemble_members"] = float(len(ensemble.members))
        self.client.log_batch(run_id, metrics=_metrics(metrics, step=0))
        self._tag_temperature(run_id, ENSEMBLE_TEMPERATURE_TAG, ensemble.temperature_scaling)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            (out / "ensemble.json").write_text(json.dumps(ensemble.summary(), indent=2) + "\n")
            if ensemble.test_bins is not None:
                label = f"ensemble of {len(ensemble.members)} ({ensemble.selection})"
                write_reliability_svg(out / ENSEMBLE_DIAGRAM_FILE, {label: ensemble.test_bins})
            self.client.log_artifacts(run_id, str(out))

    def trial_summaries(self, experiment_id: str, parent_run_id: str) -> list[TrialSummary]:
        """The sweep's trials as MLflow holds them: state, parameters and final metrics."""
        runs = self.client.search_runs(
            [experiment_id],
            f"tags.`{PARENT_RUN_TAG}` = '{_quote(parent_run_id)}'",
            max_results=MAX_SEARCH_RESULTS,
        )
        return [
            TrialSummary(
                trial_id=run.data.tags.get(TRIAL_TAG, ""),
                name=run.data.tags.get(
                    TRIAL_NAME_TAG, run.data.tags.get(RUN_NAME_TAG, run.info.run_id)
                ),
                state=run.data.tags.get(STATUS_TAG, "unknown"),
                params=dict(run.data.params),
                metrics=dict(run.data.metrics),
                mlflow_run_id=run.info.run_id,
            )
            for run in runs
        ]

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, v[:MAX_TAG_LENGTH]) for k, v in tags.items()])

    def close_trial(self, run_id: str, status: str, state: str, error: str | None = None) -> None:
        """End a child run: MLflow ``status`` (FINISHED/FAILED/KILLED) and gradreg ``state``."""
        if error:
            self.client.set_tag(run_id, ERROR_TAG, error[:MAX_TAG_LENGTH])
        self.client.set_tag(run_id, STATUS_TAG, state)
        self.client.set_terminated(run_id, status=status)

    def running_trials(self, experiment_id: str, parent_run_id: str) -> dict[str, str]:
        """The sweep's trial runs still marked RUNNING: run id -> Tune trial id."""
        runs = self.client.search_runs(
            [experiment_id],
            f"tags.`{PARENT_RUN_TAG}` = '{_quote(parent_run_id)}' "
            "and attributes.status = 'RUNNING'",
        )
        return {run.info.run_id: run.data.tags.get(TRIAL_TAG, "") for run in runs}

    def _find(self, experiment_id: str, filter_string: str) -> str | None:
        runs = self.client.search_runs(
            [experiment_id], filter_string, max_results=1, order_by=["attributes.start_time ASC"]
        )
        return runs[0].info.run_id if runs else None

    # ------------------------------------------------------------ the search (sweeps.study)

    def tag_study(self, run_id: str, storage: str, name: str, source: str) -> None:
        """Where the sweep's Optuna study is (``storage``: its URL, password hidden, or
        ``memory``), its name, and which rule chose the place."""
        tags = {STUDY_STORAGE_TAG: storage, STUDY_NAME_TAG: name, STUDY_SOURCE_TAG: source}
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value[:MAX_TAG_LENGTH])

    def log_warm_start(self, run_id: str, report: Mapping[str, Any]) -> None:
        """Where a warm-started sweep's seeded trials came from (`sweeps.warm_start`): a tag
        that says how many of which sweeps, and ``warm_start.json`` with the skipped counts."""
        summary = f"{report['trials_seeded']} trials of {', '.join(report['sweeps'])}"
        self.client.set_tag(run_id, WARM_START_TAG, summary[:MAX_TAG_LENGTH])
        self.log_text(run_id, json.dumps(report, indent=2) + "\n", WARM_START_FILE)

    def log_importances(self, run_id: str, importances: Importances) -> None:
        """A sweep's parameter importances on its parent run: ``importance.<param>`` metrics and
        ``param_importances.png``, or only the tag that says why there are none."""
        self.client.set_tag(run_id, IMPORTANCE_TAG, importances.note[:MAX_TAG_LENGTH])
        if not importances.values:
            return
        metrics = {f"importance.{k}": v for k, v in importances.values.items()}
        self.client.log_batch(run_id, metrics=_metrics(metrics, step=0))
        from gradreg.evaluation.plots import write_param_importances  # matplotlib: only when needed

        with tempfile.TemporaryDirectory() as tmp:
            path = write_param_importances(
                Path(tmp, IMPORTANCE_FILE),
                importances.values,
                title=f"Parameter importances for {importances.metric} "
                f"({importances.trials} trials)",
            )
            self.client.log_artifact(run_id, str(path))


def trial_run_name(sweep_name: str, number: int | None, method: str) -> str:
    """A trial run's name in the MLflow UI: ``digits-vl-uniform #7 vl-uniform``."""
    numbered = sweep_name if number is None else f"{sweep_name} #{number}"
    return f"{numbered} {method}" if method else numbered


def _parent_params(spec: SweepSpec) -> dict[str, Any]:
    params: dict[str, Any] = {
        "dataset": spec.dataset.identifier,
        "model": spec.model.identifier,
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


def _best_metrics(outcome: SweepOutcome) -> dict[str, float]:
    if len(outcome.best) != 1:
        return {"pareto_size": float(len(outcome.best))}
    best = outcome.best[0]
    return {f"best_{k}": v for k, v in best.metrics.items() if k != "epoch"}


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def _params(params: Mapping[str, Any]) -> list[Param]:
    return [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]


def _metrics(metrics: Mapping[str, Any], step: int) -> list[Metric]:
    now = int(time.time() * 1000)
    return [
        Metric(key, float(value), now, step)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]


# The search on the parent run (Tracker.tag_study, Tracker.log_importances).
STUDY_STORAGE_TAG = "gradreg.study.storage"
STUDY_NAME_TAG = "gradreg.study.name"
STUDY_SOURCE_TAG = "gradreg.study.source"
WARM_START_TAG = "gradreg.warm_start"
WARM_START_FILE = "warm_start.json"
IMPORTANCE_TAG = "gradreg.importance"
IMPORTANCE_FILE = "param_importances.png"
