"""Spec parameters → an Optuna search space and sampler."""

from __future__ import annotations

from typing import Any

import optuna

from gradreg.methods import METHODS
from sweeps._optuna_compat import LockFreeNSGAIISampler
from sweeps.spec import CategoricalParameter, FloatParameter, IntParameter, SweepSpec


class SearchSpace:
    """Optuna define-by-run space: the method first, then only the parameters it uses.

    A method comparison therefore never samples (or records) noise_scale for MAP. Instances
    are pickled with Tune's searcher state, so this holds plain data only.
    """

    def __init__(self, spec: SweepSpec) -> None:
        self.method = spec.method
        self.parameters = dict(spec.parameters)
        # Whether the spec fixes a method's σ² switch on; a searched switch is drawn per trial
        # instead. (Saved sweeps pickled "fixed on or searched" here, which draws the same.)
        self.learns_noise_scale = any(
            METHODS[m].learn_switch is not None and METHODS[m].learns_variance(spec.fixed)
            for m in spec.methods
        )

    def __call__(self, trial: optuna.Trial) -> None:
        method = self.method
        if method is None:
            method = suggest(trial, "method", self.parameters["method"])
        entry = METHODS[method]
        switch = entry.learn_switch  # every method of the uniform family has it, not VL's only
        if switch is not None and switch in self.parameters:
            learns = bool(suggest(trial, switch, self.parameters[switch]))
        else:
            learns = self.learns_noise_scale
        used = entry.settings(learns)
        for name, parameter in self.parameters.items():
            if name in ("method", switch) or name not in used:
                continue
            suggest(trial, name, parameter)

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {name: distribution(p) for name, p in self.parameters.items()}


def distribution(
    parameter: FloatParameter | IntParameter | CategoricalParameter,
) -> optuna.distributions.BaseDistribution:
    if isinstance(parameter, FloatParameter):
        return optuna.distributions.FloatDistribution(
            parameter.low, parameter.high, log=parameter.scale == "log", step=parameter.step
        )
    if isinstance(parameter, IntParameter):
        return optuna.distributions.IntDistribution(
            parameter.low, parameter.high, log=parameter.scale == "log", step=parameter.step
        )
    return optuna.distributions.CategoricalDistribution(parameter.choices)


def suggest(
    trial: optuna.Trial, name: str, parameter: FloatParameter | IntParameter | CategoricalParameter
) -> Any:
    if isinstance(parameter, FloatParameter):
        return trial.suggest_float(
            name, parameter.low, parameter.high, log=parameter.scale == "log", step=parameter.step
        )
    if isinstance(parameter, IntParameter):
        return trial.suggest_int(
            name, parameter.low, parameter.high, log=parameter.scale == "log", step=parameter.step
        )
    return trial.suggest_categorical(name, parameter.choices)


class PicklableNSGAIISampler(LockFreeNSGAIISampler):
    """NSGA-II that Tune can save: Optuna 5.1's genetic samplers hold a `threading.Lock`,
    which neither pickle nor cloudpickle can write into the experiment state
    (`sweeps._optuna_compat`). Tune's saved states name this import path."""


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the spec's `search` section names, seeded."""
    search = spec.search
    seed = search.seed
    if search.algorithm == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.n_startup_trials)
    if search.algorithm == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=search.n_startup_trials)
    if search.algorithm == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            n_startup_trials=search.n_startup_trials,
            # Categorical parameters fall back to this sampler; CMA-ES handles the numbers.
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
            warn_independent_sampling=False,
        )
    if search.algorithm == "nsga2":
        return PicklableNSGAIISampler(seed=seed, population_size=search.population_size or 50)
    if search.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown search algorithm {search.algorithm!r}")
