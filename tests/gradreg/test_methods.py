"""The method table and its front door: every entry builds, trains and names its settings."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from torch import nn

import gradreg
from gradreg.config import TrainConfig
from gradreg.curvature.fisher import fisher_diagonal
from gradreg.curvature.layer_rules import LAYER_RULES, LayerRule, rule_for
from gradreg.methods import (
    METHODS,
    POSTERIOR_ARGUMENTS,
    get_method,
    method_for,
    posterior_class_of,
)
from tests.helpers.oracles import brute_force_fisher, inputs_for, tiny_mlp


def needed(name: str) -> dict[str, float]:
    return {setting: 0.01 for setting in METHODS[name].required}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_builds_through_the_front_door_and_takes_a_step(name):
    model = tiny_mlp()
    post = gradreg.posterior(model, name, n_data=40, **needed(name))
    assert isinstance(post, posterior_class_of(METHODS[name]))
    if METHODS[name].variance is not None:
        assert post.variance == METHODS[name].variance
    x = inputs_for(model, 6)
    terms = post.loss(x, torch.tensor([0, 1, 2, 0, 1, 2]))
    terms.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", list(METHODS))
def test_train_config_trains_the_method_the_table_names(name):
    entry = METHODS[name]
    config = TrainConfig(**entry.train_settings(needed(name)))
    assert config.method_name == name
    assert method_for(config.method, config.variance) is entry
    for setting, default in entry.defaults.items():
        assert getattr(config, setting) == default


@pytest.mark.parametrize("name", list(METHODS))
def test_a_posterior_class_built_directly_has_its_method_table_defaults(name):
    """`METHODS` is the defaults' one home: the constructors read them, so a class built
    without the front door trains what the table says (and entries sharing a class agree).
    A training-loop default (IVON's lr) is TrainConfig's to fill in."""
    entry = METHODS[name]
    parameters = inspect.signature(posterior_class_of(entry)).parameters
    for setting, default in entry.defaults.items():
        if setting in POSTERIOR_ARGUMENTS:
            assert parameters[setting].default == default, setting
        else:
            assert setting not in parameters, setting
            assert getattr(TrainConfig(**entry.train_settings(needed(name))), setting) == default
    for other in METHODS.values():
        if other.posterior_class == entry.posterior_class:
            assert other.defaults == entry.defaults, other.name


def test_the_uniform_familys_switch_and_the_settings_a_search_may_reach():
    switched = {name for name, entry in METHODS.items() if entry.learn_switch}
    assert switched == {"vl-uniform", "mcvi-uniform"}  # the family's, whichever trainer
    for name in switched:
        entry = METHODS[name]
        assert entry.learn_switch == "learn_noise_scale"
        assert "variance_lr" not in entry.search_settings({}, ())
        assert "variance_lr" in entry.search_settings({"learn_noise_scale": True}, ())
        assert "variance_lr" in entry.search_settings({}, ("learn_noise_scale",))
        assert "variance_lr" not in entry.train_settings({"variance_lr": 0.1})
        assert (
            entry.train_settings({"learn_noise_scale": True, "variance_lr": 0.1})["variance_lr"]
            == 0.1
        )
    # a learned family reads variance_lr whatever the switch; a point estimate never does
    assert "variance_lr" in METHODS["vl-diagonal"].search_settings({}, ())
    assert "variance_lr" not in METHODS["map"].search_settings({}, ("learn_noise_scale",))


def test_unknown_names_and_settings_are_value_errors_that_list_what_is_accepted():
    model = tiny_mlp()
    with pytest.raises(ValueError, match=r"unknown method 'vl-full'; accepted: vl-uniform, "):
        gradreg.posterior(model, "vl-full", n_data=10)
    with pytest.raises(ValueError, match=r"unknown method 'sgld'; accepted: vl-uniform"):
        get_method("sgld")
    with pytest.raises(
        ValueError, match=r"'map' does not take noise_scale; it takes: prior_variance, kl_weight"
    ):
        gradreg.posterior(model, "map", n_data=10, noise_scale=0.1)
    with pytest.raises(ValueError, match=r"does not take lr \(lr: training-loop settings"):
        gradreg.posterior(model, "vl-diagonal", n_data=10, lr=0.1)
    with pytest.raises(ValueError, match="variance='uniform' needs noise_scale"):
        gradreg.posterior(model, "vl-uniform", n_data=10)


def test_the_method_table_imports_no_torch():
    code = "import sys, gradreg.methods; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_a_new_layer_type_is_one_rule_and_one_table_entry(monkeypatch):
    class Scale(nn.Module):
        """y = w ⊙ x, a layer the table has no rule for."""

        def __init__(self, n: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.linspace(0.5, 1.5, n, dtype=torch.float64))
            self.bias = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.weight

    def scale_squares(module, a, g, weights):
        per_example = (g * a).square()  # ∂ of Σ_o w_o a_o against w_o, squared, per example
        return [per_example.sum(0) if weights is None else weights @ per_example]

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), Scale(5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'1' \(Scale\) has parameters but no per-example rule"):
        fisher_diagonal(model, x, estimator="per_example")
    monkeypatch.setitem(LAYER_RULES, Scale, LayerRule(scale_squares))
    assert rule_for(model[1]) is LAYER_RULES[Scale]
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    fast = fisher_diagonal(model, x, estimator="per_example", labels=labels)
    slow = brute_force_fisher(model, x, labels=labels)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
