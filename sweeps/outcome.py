"""How a sweep ended, from Tune's results: each trial's final state and the sweep's status."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any

from sweeps.records import (
    RUN_ID_KEY,
    SweepOutcome,
    SweepRecord,
    SweepStatus,
    TrialSummary,
    best_trials,
    reported_metrics,
)
from sweeps.spec import SweepSpec
from sweeps.spec.resolve import trial_epochs


def sweep_outcome(
    spec: SweepSpec,
    record: SweepRecord,
    path: str,
    results: Iterable[Any],
    states: Mapping[str, str],
    *,
    stop_requested: bool,
    failed_too_often: bool,
    unplaceable: str | None = None,
    refused: str | None = None,
    reports: Mapping[str, Mapping[str, Any]] | None = None,
) -> SweepOutcome:
    """The outcome of a sweep whose Tune run returned ``results`` (its `ResultGrid`).

    ``states`` are the final states the driver saw (ASHA's stops among them);
    ``stop_requested``, ``failed_too_often`` and ``unplaceable`` (why no trial could be
    placed) say why the run may have ended early; ``refused``, why the sweep failed before
    any trial started (its preflight: `sweeps.preflight`), is its reason as it is.
    ``reports`` are the finished trials' last reports by trial id, of which Tune's results hold
    only a part (`sweeps.tune_results`).
    """
    trials = sorted(
        (trial_summary(spec, r, states, reports or {}) for r in results), key=lambda t: t.name
    )
    unfinished = [t for t in trials if t.state == "interrupted"]
    failed = [t for t in trials if t.state == "failed"]
    status: SweepStatus
    if refused is not None:
        status, reason = "failed", refused
    elif unplaceable is not None:
        status, reason = "failed", unplaceable
    elif unfinished or stop_requested:
        status, reason = "stopped", f"interrupted with {len(unfinished)} trial(s) unfinished"
    elif failed_too_often:
        status = "failed"
        allowed = spec.budget.max_failed_trials
        reason = f"{len(failed)} trials failed (budget.max_failed_trials={allowed})"
    elif trials and len(failed) == len(trials):
        status, reason = "failed", "every trial failed"
    elif not trials:
        status, reason = "failed", "no trial ran (time budget too small?)"
    else:
        status = "succeeded"
        reason = f"{len(trials) - len(failed)} of {len(trials)} trials finished"
    if status == "failed" and refused is None and failed and failed[0].error:
        # What broke, in the trial's words: a lost bucket or MLflow server names itself.
        reason += f"; the first failure ({failed[0].name}): {failed[0].error}"
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


def trial_summary(
    spec: SweepSpec,
    result: Any,
    states: Mapping[str, str],
    reports: Mapping[str, Mapping[str, Any]],
) -> TrialSummary:
    """One Tune `Result` as a trial summary; its state says how the trial ended. Its metrics
    are its last report in ``reports``, or what Tune kept of it (all of it in a sweep saved
    before `sweeps.tune_results`)."""
    metrics = dict(result.metrics or {})
    trial_id = str(metrics.get("trial_id") or PurePosixPath(result.path).name)
    metrics.update(reports.get(trial_id, {}))
    params = dict(result.config or {})
    if result.error is not None:
        state = "failed"
    elif "epoch" in metrics and metrics["epoch"] >= trial_epochs(spec, params):
        state = "succeeded"
    elif states.get(trial_id) == "stopped":
        state = "stopped"  # cut short by ASHA (or the time budget); Tune will not resume it
    else:
        state = "interrupted"
    error = None
    if result.error is not None:
        lines = [line for line in str(result.error).strip().splitlines() if line.strip()]
        error = lines[-1] if lines else repr(result.error)
    return TrialSummary(
        trial_id=trial_id,
        name=PurePosixPath(result.path).name,
        state=state,
        params=params,
        metrics=reported_metrics(metrics),
        mlflow_run_id=metrics.get(RUN_ID_KEY),
        error=error,
    )
