"""What a sweep does once Tune has returned: close the trial runs Tune left open, build the sweep
ensemble, register the best trial's model, log the parameter importances, and finish the MLflow
parent run with the outcome.

A step that fails is reported (in the outcome, or on the parent run) and never fails the sweep:
its trials ran and their results stand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sweeps.ensemble import build_ensemble
from sweeps.importances import Importances, study_importances
from sweeps.records import SweepOutcome, SweepRecord, ranked_trials
from sweeps.spec import SweepSpec
from sweeps.study import StudyPlace
from sweeps.tracking import Tracker

Say = Callable[[str], None]


def after_tune(
    tracker: Tracker,
    spec: SweepSpec,
    record: SweepRecord,
    outcome: SweepOutcome,
    place: StudyPlace,
    say: Say,
) -> SweepOutcome:
    """Every step after Tune, in order; the outcome with what they added. ``say`` prints a line
    of the driver's output."""
    tracker.close_unfinished_runs(record, outcome)
    outcome = with_ensemble(tracker, spec, record, outcome)
    outcome = with_registered_model(tracker, spec, record, outcome)
    log_importances(tracker, spec, record, outcome, place, say)
    tracker.finish_sweep(outcome)
    return outcome


def with_ensemble(
    tracker: Tracker, spec: SweepSpec, record: SweepRecord, outcome: SweepOutcome
) -> SweepOutcome:
    """The outcome with its sweep ensemble, logged on the parent run. A failure to build one
    is the ensemble's, not the sweep's: the outcome says why and keeps every trial."""
    try:
        ensemble = build_ensemble(tracker, spec.ensemble, spec.objectives[0], outcome.trials)
        if ensemble is not None and ensemble.members:
            tracker.log_ensemble(record.parent_run_id, ensemble)
    except Exception as error:  # reported in the outcome (see the docstring)
        return dataclasses.replace(outcome, ensemble={"error": f"{type(error).__name__}: {error}"})
    if ensemble is None:
        return outcome
    return dataclasses.replace(outcome, ensemble=ensemble.summary())


def with_registered_model(
    tracker: Tracker, spec: SweepSpec, record: SweepRecord, outcome: SweepOutcome
) -> SweepOutcome:
    """The outcome with the best trial's model registered (`sweeps.model`). As with the
    ensemble, a failure to register is reported in the outcome, not the sweep's. Only a sweep
    that succeeded registers: a stopped one registers when its resume ends."""
    if not spec.tracking.registers_best or outcome.status != "succeeded":
        return outcome
    best = ranked_trials(spec.objectives[0], outcome.trials)
    if not best or best[0].mlflow_run_id is None:
        return outcome
    name = spec.tracking.registered_model or spec.name
    from sweeps.model import register_trial_model  # MLflow's model code, only when needed

    registered: dict[str, str]
    try:
        registered = register_trial_model(tracker, spec, record, best[0], name)
    except Exception as error:  # reported in the outcome (see the docstring)
        registered = {"name": name, "error": f"{type(error).__name__}: {error}"}
    return dataclasses.replace(outcome, registered_model=registered)


def log_importances(
    tracker: Tracker,
    spec: SweepSpec,
    record: SweepRecord,
    outcome: SweepOutcome,
    place: StudyPlace,
    say: Say,
) -> Importances:
    """The parameter importances on the parent run (`sweeps.importances`), or a tag saying why
    there are none; ``say`` prints them. A failure to compute them is theirs, not the sweep's:
    the tag says it."""
    metric = spec.objectives[0].metric
    try:
        importances = study_importances(place, spec, outcome.trials)
        tracker.log_importances(record.parent_run_id, importances)
    except Exception as error:  # reported on the parent run (see the docstring)
        importances = Importances(metric, {}, 0, f"failed: {type(error).__name__}: {error}")
        tracker.log_importances(record.parent_run_id, importances)  # the tag alone
    if importances.values:
        shares = ", ".join(f"{k} {v:.2f}" for k, v in importances.values.items())
        say(f"parameter importances for {metric}: {shares} ({importances.note})")
    else:
        say(f"parameter importances for {metric}: {importances.note}")
    return importances
