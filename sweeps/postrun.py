"""What a sweep does once Tune has returned: close the trial runs Tune left open, build the sweep
ensemble, register the best trial's model, log the parameter importances, and finish the MLflow
parent run with the outcome; and building a finished sweep's ensemble again.

A step that fails is reported (in the outcome, or on the parent run) and never fails the sweep:
its trials ran and their results stand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from sweeps.ensemble import SweepEnsemble, build_ensemble
from sweeps.importances import Importances, study_importances
from sweeps.records import SweepOutcome, SweepRecord, ranked_trials
from sweeps.spec import EnsembleSection, SweepSpec
from sweeps.spec.parse import validate_shape
from sweeps.statefiles import read_record
from sweeps.study import StudyPlace
from sweeps.tracking import Tracker

Say = Callable[[str], None]


@dataclass(frozen=True)
class AfterTune:
    """The steps after Tune for one sweep; ``say`` prints a line of the driver's output."""

    tracker: Tracker
    spec: SweepSpec
    record: SweepRecord
    place: StudyPlace
    say: Say

    def __call__(self, outcome: SweepOutcome) -> SweepOutcome:
        """Every step, in order; the outcome with what they added."""
        self.tracker.close_unfinished_runs(self.record, outcome)
        outcome = self.with_ensemble(outcome)
        outcome = self.with_registered_model(outcome)
        self.log_importances(outcome)
        self.tracker.finish_sweep(outcome)
        return outcome

    def with_ensemble(self, outcome: SweepOutcome) -> SweepOutcome:
        """The outcome with its sweep ensemble, logged on the parent run. A failure to build
        one is the ensemble's, not the sweep's: the outcome says why and keeps every trial."""
        spec, tracker = self.spec, self.tracker
        try:
            ensemble = build_ensemble(tracker, spec.ensemble, spec.objectives[0], outcome.trials)
            if ensemble is not None and ensemble.members:
                tracker.log_ensemble(self.record.parent_run_id, ensemble)
        except Exception as error:  # reported in the outcome (see the docstring)
            failed = {"error": f"{type(error).__name__}: {error}"}
            return dataclasses.replace(outcome, ensemble=failed)
        if ensemble is None:
            return outcome
        return dataclasses.replace(outcome, ensemble=ensemble.summary())

    def with_registered_model(self, outcome: SweepOutcome) -> SweepOutcome:
        """The outcome with the best trial's model registered (`sweeps.model`). As with the
        ensemble, a failure to register is reported in the outcome, not the sweep's. Only a
        sweep that succeeded registers: a stopped one registers when its resume ends."""
        spec = self.spec
        if not spec.tracking.registers_best or outcome.status != "succeeded":
            return outcome
        best = ranked_trials(spec.objectives[0], outcome.trials)
        if not best or best[0].mlflow_run_id is None:
            return outcome
        name = spec.tracking.registered_model or spec.name
        from sweeps.model import register_trial_model  # MLflow's model code, only when needed

        registered: dict[str, str]
        try:
            registered = register_trial_model(self.tracker, spec, self.record, best[0], name)
        except Exception as error:  # reported in the outcome (see the docstring)
            registered = {"name": name, "error": f"{type(error).__name__}: {error}"}
        return dataclasses.replace(outcome, registered_model=registered)

    def log_importances(self, outcome: SweepOutcome) -> Importances:
        """The parameter importances on the parent run (`sweeps.importances`), or a tag saying
        why there are none; said on the driver's output. A failure to compute them is theirs,
        not the sweep's: the tag says it."""
        metric = self.spec.objectives[0].metric
        parent = self.record.parent_run_id
        try:
            importances = study_importances(self.place, self.spec, outcome.trials)
            self.tracker.log_importances(parent, importances)
        except Exception as error:  # reported on the parent run (see the docstring)
            importances = Importances(metric, {}, 0, f"failed: {type(error).__name__}: {error}")
            self.tracker.log_importances(parent, importances)  # the tag alone
        if importances.values:
            shares = ", ".join(f"{k} {v:.2f}" for k, v in importances.values.items())
            self.say(f"parameter importances for {metric}: {shares} ({importances.note})")
        else:
            self.say(f"parameter importances for {metric}: {importances.note}")
        return importances


def rebuild_ensemble(
    path: str, *, size: int | None = None, selection: str | None = None
) -> SweepEnsemble:
    """Build again the ensemble of the sweep whose Tune state is at ``path``, from its trials in
    MLflow, and log it on its parent run. ``size`` and ``selection`` replace the spec's."""
    record = read_record(path)
    if record is None:
        name = PurePosixPath(path).name
        raise FileNotFoundError(f"no sweep {name!r} under {PurePosixPath(path).parent}")
    spec = validate_shape(record.spec)
    changes = {k: v for k, v in {"size": size, "selection": selection}.items() if v is not None}
    section = EnsembleSection.model_validate({**spec.ensemble.model_dump(), **changes})
    if section.size == 0:
        raise ValueError("ensemble size 0 builds no ensemble; give a size >= 1")
    tracker = Tracker(record.tracking_uri)
    trials = tracker.trial_summaries(record.experiment_id, record.parent_run_id)
    ensemble = build_ensemble(tracker, section, spec.objectives[0], trials)
    assert ensemble is not None  # a size of 1 or more builds one
    if ensemble.members:
        tracker.log_ensemble(record.parent_run_id, ensemble)
    return ensemble
