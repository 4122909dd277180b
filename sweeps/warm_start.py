"""Warm start: seed a new sweep's Optuna study with earlier sweeps' finished trials.

A trial of an earlier sweep seeds the new study only if its objective value means the same
thing there as it would here, and its parameters are a point of the new space:

1. Its sweep trained the same data, network and code: equal ``dataset`` and ``model`` sections
   and the same code bundle digest; and it optimised the same ``objectives`` (metrics and
   goals), so its values are the new study's values. A file dataset is compared by its spec
   (path and options), not its bytes.
2. It finished all its epochs: Optuna holds it COMPLETE and Tune's state says ``succeeded``
   (an ASHA-stopped trial's value is an early epoch's).
3. Every setting the new sweep holds fixed (``fixed`` and ``method``) has the same value in the
   trial, searched or fixed there: a trial trained for 8 epochs or at another ``lr`` measured
   another objective, so changing ``epochs`` or ``lr`` skips every trial, and says so. Only
   where a trial ran (`WHERE_IT_RUNS`: ``device``, ``compile``) may differ.
4. Every parameter the new space would ask of it has a value inside the new bounds or choices
   (replayed through `sweeps.space.SearchSpace`, so a method's own parameters only).

Seeded trials are added to the study COMPLETE with their values (`optuna.Study.add_trials`);
they are not Tune trials, MLflow runs or store rows, and do not count against ``max_trials``.
They do count as the sampler's startup trials (``search.n_startup_trials``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from sweeps.space import SearchSpace
from sweeps.spec import SweepSpec
from sweeps.spec.parse import validate_shape
from sweeps.statefiles import STATES_FILE, read_json, read_record
from sweeps.study import TUNE_TRIAL_ATTR, StudyPlace, existing_study, resumed_place

SEEDED_ATTR = "gradreg.seeded_from"  # "<sweep>/<Tune trial id>" on each seeded Optuna trial
METHOD_SETTING = "method"
# Settings that say where or how fast a trial runs, not what it computes: they may differ.
WHERE_IT_RUNS: frozenset[str] = frozenset({"device", "compile"})


class WarmStartError(ValueError):
    """A warm start that cannot run: a named sweep is missing or its study unreadable."""


@dataclass(frozen=True)
class SourceSweep:
    """An earlier sweep as a warm start reads it."""

    name: str
    spec: SweepSpec
    trials: Sequence[FrozenTrial]  # its Optuna study's
    states: Mapping[str, str]  # its finished Tune trials' states, by Tune trial id


@dataclass(frozen=True)
class WarmStartReport:
    """What a warm start seeded and what it skipped, by reason."""

    sweeps: tuple[str, ...]
    trials_seeded: int
    trials_skipped: dict[str, int] = field(default_factory=dict)
    seeded_from: tuple[str, ...] = ()  # each seeded trial's "<sweep>/<Tune trial id>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "sweeps": list(self.sweeps),
            "trials_seeded": self.trials_seeded,
            "trials_skipped": dict(sorted(self.trials_skipped.items())),
            "seeded_from": list(self.seeded_from),
        }

    def describe(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.trials_skipped.items()))
        return (
            f"warm start: {self.trials_seeded} trials of {', '.join(self.sweeps)} seed the "
            f"study" + (f"; skipped: {skipped}" if skipped else "")
        )


def read_source(name: str, path: str, place: StudyPlace) -> SourceSweep:
    """Sweep ``name`` from its saved state at ``path`` and its study at ``place`` (where a sweep
    of that name would keep it; the sweep's own record says whether it kept it in memory)."""
    record = read_record(path)
    if record is None:
        raise WarmStartError(
            f"search.warm_start names sweep {name!r}, but no sweep of that name has state at {path}"
        )
    place = resumed_place(place, record.extra.get("study"))
    if not place.persistent:
        raise WarmStartError(
            f"sweep {name!r} kept its Optuna study in memory, inside Tune's saved state ("
            f"{place.why}); a warm start reads studies kept in a database (GRADREG_STUDY_STORAGE)"
        )
    try:
        study = existing_study(place)
    except FileNotFoundError as missing:
        raise WarmStartError(f"search.warm_start names sweep {name!r}: {missing}") from None
    states = read_json(path, STATES_FILE) or {}
    return SourceSweep(name, validate_shape(record.spec), study.get_trials(deepcopy=False), states)


def read_sources(
    spec: SweepSpec, name: str, locate: Callable[[str], tuple[str, StudyPlace]]
) -> list[SourceSweep] | None:
    """The sweeps ``spec`` (sweep ``name``'s) warm-starts from, each read where ``locate`` says
    (its Tune state's path, its study's place); None for a spec that names none."""
    if spec.search.warm_start is None:
        return None
    named = spec.search.warm_start.sweeps
    if name in named:
        raise WarmStartError(f"sweep {name!r} cannot warm-start from itself (search.warm_start)")
    return [read_source(source, *locate(source)) for source in named]


def seed_study(
    study: optuna.Study, spec: SweepSpec, sources: Sequence[SourceSweep]
) -> WarmStartReport:
    """Add ``sources``' trials that fit ``spec`` (see the module's rules) to ``study``."""
    seeded: list[FrozenTrial] = []
    skipped: Counter[str] = Counter()
    for source in sources:
        mismatch = _sweep_mismatch(spec, source.spec)
        for trial in source.trials:
            reason = mismatch or _trial_mismatch(spec, source, trial)
            if reason is not None:
                skipped[reason] += 1
                continue
            point = _replay(spec, _configuration(source.spec, trial))
            if isinstance(point, str):
                skipped[point] += 1
                continue
            params, distributions = point
            tune_id = trial.user_attrs.get(TUNE_TRIAL_ATTR, f"optuna-{trial.number}")
            seeded.append(
                optuna.trial.create_trial(
                    params=params,
                    distributions=distributions,
                    values=list(trial.values),
                    user_attrs={SEEDED_ATTR: f"{source.name}/{tune_id}"},
                )
            )
    study.add_trials(seeded)
    origins = tuple(trial.user_attrs[SEEDED_ATTR] for trial in seeded)
    return WarmStartReport(tuple(s.name for s in sources), len(seeded), dict(skipped), origins)


def _sweep_mismatch(spec: SweepSpec, earlier: SweepSpec) -> str | None:
    if earlier.dataset != spec.dataset:
        return "another dataset"
    if earlier.model != spec.model:
        return "another model"
    if earlier.code.digest != spec.code.digest:
        return "other code"
    if [(o.metric, o.goal) for o in earlier.objectives] != [
        (o.metric, o.goal) for o in spec.objectives
    ]:
        return "other objectives"
    return None


def _trial_mismatch(spec: SweepSpec, source: SourceSweep, trial: FrozenTrial) -> str | None:
    if trial.state != TrialState.COMPLETE:
        return "not finished"
    tune_id = trial.user_attrs.get(TUNE_TRIAL_ATTR)
    state = source.states.get(tune_id) if tune_id is not None else None
    if state is not None and state != "succeeded":
        return "stopped early" if state == "stopped" else "not finished"
    configuration = _configuration(source.spec, trial)
    held = dict(spec.fixed)
    if spec.method is not None:
        held[METHOD_SETTING] = spec.method
    for name in sorted(set(held) | set(configuration)):
        if name in spec.parameters or (name == METHOD_SETTING and spec.method is None):
            continue  # searched here: the replay checks it
        if name in WHERE_IT_RUNS:
            continue
        if configuration.get(name) != held.get(name):
            return f"{name} differs"
    return None


def _configuration(spec: SweepSpec, trial: FrozenTrial) -> dict[str, Any]:
    """Every setting the trial trained with that its sweep named: fixed, method, searched."""
    configuration: dict[str, Any] = dict(spec.fixed)
    if spec.method is not None:
        configuration[METHOD_SETTING] = spec.method
    configuration.update(trial.params)
    return configuration


def _replay(
    spec: SweepSpec, configuration: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, BaseDistribution]] | str:
    """The trial as a point of ``spec``'s space, or why it is none."""
    recorder = _Recorder(configuration)
    try:
        SearchSpace(spec)(recorder)  # type: ignore[arg-type]  # duck-typed as optuna.Trial
    except _NotAPoint as reason:
        return str(reason)
    return recorder.params, recorder.distributions


class _NotAPoint(Exception):
    pass


class _Recorder:
    """Answers the space's suggestions with a configuration's values, checking each."""

    def __init__(self, configuration: Mapping[str, Any]) -> None:
        self.configuration = configuration
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, BaseDistribution] = {}

    def _take(self, name: str, wanted: BaseDistribution) -> Any:
        if name not in self.configuration:
            raise _NotAPoint(f"no {name}")
        value = self.configuration[name]
        if not _inside(wanted, value):
            raise _NotAPoint(f"{name} outside the space")
        self.params[name] = value
        self.distributions[name] = wanted
        return value

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> Any:
        return self._take(name, FloatDistribution(low, high, step=step, log=log))

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> Any:
        return self._take(name, IntDistribution(low, high, step=step, log=log))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._take(name, CategoricalDistribution(choices))


def _inside(distribution: BaseDistribution, value: Any) -> bool:
    """``value`` is one ``distribution`` can draw: a choice, or a number in its bounds on its
    step (a whole number for an integer parameter)."""
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    assert isinstance(distribution, FloatDistribution | IntDistribution)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(distribution, IntDistribution) and not float(value).is_integer():
        return False
    if not distribution.low <= value <= distribution.high:
        return False
    if distribution.step is None:
        return True
    steps = (value - distribution.low) / distribution.step
    return abs(steps - round(steps)) < 1e-9
