"""Who learns noise_scale: every method whose variance family has the switch (the uniform
family's learn_noise_scale) can search it, VL's and sampling VI's alike."""

from __future__ import annotations

import optuna
import pytest

from gradreg.methods import METHODS
from sweeps import Limits, parse_spec
from sweeps.space import SearchSpace, make_sampler
from sweeps.spec.resolve import trial_config
from tests.helpers.specs import DIGITS_SWEEP

optuna.logging.set_verbosity(optuna.logging.WARNING)
SWITCHED = [name for name, entry in METHODS.items() if entry.learn_switch == "learn_noise_scale"]


def test_the_uniform_family_is_the_switch_and_both_of_its_methods_have_it():
    assert SWITCHED == ["vl-uniform", "mcvi-uniform"]
    assert all(METHODS[name].learn_switch is None for name in METHODS if name not in SWITCHED)


@pytest.mark.parametrize("method", SWITCHED)
def test_a_searched_switch_is_drawn_and_the_trial_trains_what_was_drawn(method):
    spec = parse_spec(
        {
            **DIGITS_SWEEP,
            "method": method,
            "fixed": {**DIGITS_SWEEP["fixed"], "noise_scale": 0.01},
            "parameters": {
                "learn_noise_scale": {"type": "categorical", "choices": [True, False]},
                "variance_lr": {"type": "float", "low": 0.001, "high": 0.1, "scale": "log"},
            },
            "search": {"algorithm": "random", "seed": 0},
        },
        Limits(),
    )
    study = optuna.create_study(sampler=make_sampler(spec))
    space = SearchSpace(spec)
    drawn = []
    for _ in range(12):
        trial = study.ask()
        space(trial)
        params = dict(trial.params)
        study.tell(trial, 0.0)
        learns = params["learn_noise_scale"]
        drawn.append(learns)
        # σ²'s learning rate is searched exactly where σ² is learned
        assert ("variance_lr" in params) == learns
        config = trial_config(spec, params)
        assert (config.method_name, config.learn_noise_scale) == (method, learns)
    assert set(drawn) == {True, False}


def test_a_space_saved_before_draws_the_same():
    """Tune pickles the space; one saved before this rule held "fixed on or searched" in
    learns_noise_scale, which draws the same trials."""
    spec = parse_spec(
        {
            **DIGITS_SWEEP,
            "parameters": {
                **DIGITS_SWEEP["parameters"],
                "learn_noise_scale": {"type": "categorical", "choices": [True, False]},
                "variance_lr": {"type": "float", "low": 0.001, "high": 0.1, "scale": "log"},
            },
            "search": {"algorithm": "random", "seed": 1},
        },
        Limits(),
    )
    saved = SearchSpace(spec)
    saved.learns_noise_scale = True  # what the earlier rule stored for a searched switch
    draws = []
    for space in (SearchSpace(spec), saved):
        study = optuna.create_study(sampler=make_sampler(spec))
        params = []
        for _ in range(8):
            trial = study.ask()
            space(trial)
            params.append(dict(trial.params))
            study.tell(trial, 0.0)
        draws.append(params)
    assert draws[0] == draws[1]
