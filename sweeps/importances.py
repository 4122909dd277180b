"""A sweep's parameter importances: each searched parameter's share in the variation of the
first objective, from the sweep's Optuna study (fANOVA, seeded), logged on the parent run when
the sweep ends (`sweeps.postrun`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.search_space import intersection_search_space
from optuna.trial import TrialState

from gradreg.names import default_goal
from sweeps.records import SCORED_STATES, TrialSummary, score
from sweeps.space import SearchSpace
from sweeps.spec import SweepSpec
from sweeps.study import StudyPlace, StudyStorage

# At least this many trials finished with the first objective, and at least two parameters to
# compare (one alone always gets 1.0).
MIN_IMPORTANCE_TRIALS = 4
MIN_IMPORTANCE_PARAMS = 2
IMPORTANCE_SEED = 0


@dataclass(frozen=True)
class Importances:
    """Each parameter's share in the first objective's variation; empty, with ``note`` saying
    why, when there was too little to tell."""

    metric: str
    values: dict[str, float]
    trials: int
    note: str


def study_importances(
    place: StudyPlace, spec: SweepSpec, trials: Sequence[TrialSummary]
) -> Importances:
    """The sweep's parameter importances for its first objective, from its study (a study kept in
    memory is rebuilt from ``trials``, the outcome's)."""
    if place.url is not None:
        study = optuna.load_study(
            study_name=place.name, storage=StudyStorage(place.url, place.name)
        )
    else:
        study = rebuilt_study(spec, trials)
    return param_importances(study, spec.objectives[0].metric)


def param_importances(study: optuna.Study, metric: str) -> Importances:
    """fANOVA importances (seeded: the same trials give the same figures) for objective 0."""
    finished = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and math.isfinite(t.values[0])
    ]
    n = len(finished)
    if n < MIN_IMPORTANCE_TRIALS:
        return Importances(
            metric,
            {},
            n,
            f"not computed: {n} trial(s) finished with {metric}, importances need "
            f"{MIN_IMPORTANCE_TRIALS}",
        )
    space = {k: d for k, d in intersection_search_space(finished).items() if not d.single()}
    if len(space) < MIN_IMPORTANCE_PARAMS:
        names = ", ".join(sorted(space)) or "none"
        return Importances(
            metric,
            {},
            n,
            f"not computed: {len(space)} searched parameter(s) in every finished trial "
            f"({names}), importances compare {MIN_IMPORTANCE_PARAMS} or more",
        )
    targets = {t.values[0] for t in finished}
    if len(targets) == 1:
        return Importances(
            metric, {}, n, f"not computed: every finished trial has {metric} = {targets.pop()}"
        )
    values = get_param_importances(
        study,
        evaluator=FanovaImportanceEvaluator(seed=IMPORTANCE_SEED),
        params=sorted(space),
        target=lambda trial: trial.values[0],
    )
    note = f"fANOVA, seed {IMPORTANCE_SEED}, over {n} finished trials, target {metric}"
    return Importances(metric, dict(values), n, note)


def rebuilt_study(spec: SweepSpec, trials: Sequence[TrialSummary]) -> optuna.Study:
    """An in-memory study of the outcome's scored trials (what Tune told its searcher)."""
    distributions = SearchSpace(spec).distributions()
    metrics = [o.metric for o in spec.objectives]
    goals = [o.goal or default_goal(o.metric) for o in spec.objectives]
    study = optuna.create_study(directions=goals)
    for trial in trials:
        values = [v for m in metrics if (v := score(trial, m)) is not None]
        if trial.state not in SCORED_STATES or len(values) < len(metrics):
            continue
        params = {k: v for k, v in trial.params.items() if k in distributions}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: distributions[k] for k in params},
                values=values,
            )
        )
    return study
