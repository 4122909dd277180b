"""The search space and sampler behind OptunaSearch, and a trial's values → TrainConfig."""

from __future__ import annotations

import optuna
import pytest
from ray import cloudpickle

from gradreg.config import TrainConfig
from gradreg.methods import COMMON_SETTINGS, HYPERPARAMETERS, settings_used, train_settings
from sweeps import Limits, load_spec_file, parse_spec
from sweeps.space import SearchSpace, make_sampler
from sweeps.spec.resolve import trial_config
from tests.helpers.specs import DIGITS_SWEEP

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample(spec, n: int) -> list[dict]:
    study = optuna.create_study(
        sampler=make_sampler(spec), directions=["minimize"] * len(spec.objectives)
    )
    space = SearchSpace(spec)
    params = []
    for _ in range(n):
        trial = study.ask()
        space(trial)
        params.append(dict(trial.params))
        study.tell(trial, [float(len(params))] * len(spec.objectives))
    return params


def test_a_method_comparison_samples_only_each_methods_own_parameters():
    spec = load_spec_file("sweeps/examples/digits-method-comparison.yaml")
    drawn = sample(spec, 40)
    assert {p["method"] for p in drawn} == set(spec.methods)
    for params in drawn:
        method = params["method"]
        assert "prior_variance" in params
        assert ("noise_scale" in params) == (method == "vl-uniform")
        assert ("init_variance" in params) == (method in ("vl-diagonal", "mcvi"))
        config = trial_config(spec, params)
        assert isinstance(config, TrainConfig)
        # fixed settings reach only the methods that use them
        assert (config.variance_lr == 0.001) == (method in ("vl-diagonal", "mcvi"))


def test_samples_respect_bounds_and_log_scale():
    spec = load_spec_file("sweeps/examples/digits-vl-uniform.yaml")
    drawn = sample(spec, 200)
    values = [p["noise_scale"] for p in drawn]
    assert all(0.001 <= v <= 0.1 for v in values)
    # log-uniform on [1e-3, 1e-1]: about half the mass below the geometric midpoint 1e-2
    below = sum(v < 0.01 for v in values) / len(values)
    assert 0.35 < below < 0.65


@pytest.mark.parametrize("algorithm", ["tpe", "gp", "cmaes", "random", "nsga2"])
def test_every_algorithm_builds_a_seeded_sampler_that_searches_the_space(algorithm):
    document = {
        **DIGITS_SWEEP,
        "search": {"algorithm": algorithm, "seed": 3, "n_startup_trials": 2},
    }
    if algorithm == "nsga2":
        document["search"] = {"algorithm": "nsga2", "seed": 3, "population_size": 4}
    if algorithm == "random":
        document["search"] = {"algorithm": "random", "seed": 3}
    spec = parse_spec(document, Limits())
    first, again = sample(spec, 6), sample(spec, 6)
    assert first == again  # same seed, same trials
    for params in first:
        assert 0.001 <= params["noise_scale"] <= 0.1
        assert 0.1 <= params["prior_variance"] <= 10.0


def test_int_and_stepped_parameters():
    document = {
        **DIGITS_SWEEP,
        "fixed": {"lr": 0.003, "noise_scale": 0.01},
        "parameters": {
            "epochs": {"type": "int", "low": 2, "high": 64, "scale": "log"},
            "batch_size": {"type": "int", "low": 32, "high": 256, "step": 32},
            "kl_weight": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25},
        },
    }
    spec = parse_spec(document, Limits())
    for params in sample(spec, 30):
        assert isinstance(params["epochs"], int) and 2 <= params["epochs"] <= 64
        assert params["batch_size"] % 32 == 0
        assert params["kl_weight"] in (0.0, 0.25, 0.5, 0.75, 1.0)


def test_trial_config_maps_spec_sections_and_values():
    spec = parse_spec({**DIGITS_SWEEP, "dataset": {"name": "digits", "split_seed": 3}}, Limits())
    config = trial_config(spec, {"noise_scale": 0.02, "prior_variance": 2.0})
    assert (config.dataset, config.split_seed, config.model) == ("digits", 3, "mlp")
    assert config.model_options == {"hidden": [32]}
    assert (config.method, config.variance) == ("vl", "uniform")
    assert (config.noise_scale, config.prior_variance, config.lr) == (0.02, 2.0, 0.003)
    assert config.epochs == 2 and config.device == "cpu"


def test_the_settings_tables_agree_with_trainconfig():
    # Every setting a method "uses" is one TrainConfig accepts for that method, and the rest
    # are refused: the sweep tables cannot drift from gradreg's own rules.
    probe = {
        "noise_scale": 0.01,
        "learn_noise_scale": True,
        "init_variance": 1e-4,
        "variance_lr": 1e-3,
        "fisher": "sampled",
        "empirical_fisher": True,
        "mc_samples": 2,
    }
    for method in ("vl-uniform", "vl-diagonal", "map", "mcvi", "laplace"):
        used = settings_used(method, learns_noise_scale=True)
        assert set(used) <= set(HYPERPARAMETERS)
        values = {k: v for k, v in probe.items() if k in used}
        values.setdefault("noise_scale", None)
        settings = train_settings(method, {k: v for k, v in values.items() if v is not None})
        TrainConfig(**settings)
        for name, value in probe.items():
            if name not in used:
                with pytest.raises(ValueError, match=name):
                    TrainConfig(**{**settings, name: value})


def test_uniform_variance_has_a_learning_rate_only_when_learned():
    assert "variance_lr" not in settings_used("vl-uniform")
    assert "variance_lr" in settings_used("vl-uniform", learns_noise_scale=True)
    assert settings_used("map") == COMMON_SETTINGS


def test_a_data_dir_that_resolves_outside_the_root_at_trial_time_is_refused(tmp_path):
    root = tmp_path / "root"
    (root / "sets").mkdir(parents=True)
    spec = parse_spec(
        {
            **DIGITS_SWEEP,
            "dataset": {"name": "cifar10", "data_dir": "sets"},
            "model": {"name": "cnn"},
        },
        Limits(data_root=root),
    )
    assert trial_config(spec, {"noise_scale": 0.01}, root).dataset_options["data_dir"] == str(
        root / "sets"
    )
    # Admitted, then the directory became a link out of the root: no fallback to the raw path.
    (root / "sets").rmdir()
    (root / "sets").symlink_to(tmp_path)
    with pytest.raises(ValueError, match=r"'sets' resolves outside the data root .*root"):
        trial_config(spec, {"noise_scale": 0.01}, root)


@pytest.mark.parametrize("algorithm", ["tpe", "gp", "cmaes", "random", "nsga2"])
def test_every_sampler_survives_the_pickling_tune_saves_it_with(algorithm):
    spec = parse_spec(
        {
            "name": "pickled",
            "dataset": {"name": "iris"},
            "method": "map",
            "parameters": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1}},
            "search": {"algorithm": algorithm, "seed": 3},
        }
    )
    sampler = cloudpickle.loads(cloudpickle.dumps(make_sampler(spec)))
    assert type(sampler) is type(make_sampler(spec))
