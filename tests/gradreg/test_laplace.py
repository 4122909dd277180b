"""Post-hoc Laplace and the GLM predictive against closed forms (float64).

Softmax regression is linear in its weights, so its linearised predictive is the model itself
and the logit variances have a closed form: v_c(x) = Σ_i x_i² σ²_{W_ci} + σ²_{b_c}.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradreg.curvature.layer_rules import per_example_obstacle
from gradreg.models import build_model
from gradreg.posteriors.glm import _by_jacobians, _rules_cover, logit_variances, mc_log_probs
from gradreg.posteriors.laplace import PRIOR_PRECISION_GRID, Laplace
from gradreg.train import fit
from tests.helpers.oracles import brute_force_fisher, inputs_for, tiny_cnn2d, tiny_mlp


def softmax_regression(d: int = 4, classes: int = 3, n: int = 30, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(d, classes).double()
    x = torch.randn(n, d, dtype=torch.float64)
    y = torch.randint(0, classes, (n,))
    with torch.no_grad():  # a "trained" network: weights of a plausible size
        model.weight.mul_(3.0)
    return model, x, y


def fitted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: float) -> Laplace:
    laplace = Laplace(model, n_data=len(x), prior_variance=1.0 / precision)
    laplace.fit_curvature(x, y)
    return laplace


def test_the_marginal_likelihood_is_the_laplace_integral_of_the_joint():
    model, x, y = softmax_regression()
    precision = 0.7
    laplace = fitted(model, x, y, precision)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    fisher = torch.cat([f.reshape(-1) for f in brute_force_fisher(model, x)])
    with torch.no_grad():
        log_lik = -nn.functional.cross_entropy(model(x), y, reduction="sum")
    scale = torch.tensor(precision**-0.5, dtype=torch.float64)  # not a float: that is fp32
    log_prior = torch.distributions.Normal(torch.zeros_like(scale), scale).log_prob(theta).sum()
    hessian = fisher + precision  # the diagonal Laplace's precision matrix
    by_definition = (
        log_lik
        + log_prior
        + 0.5 * theta.numel() * math.log(2 * math.pi)
        - 0.5 * torch.log(hessian).sum()
    )
    got = laplace.log_marginal_likelihood(x, y, precision)
    assert got == pytest.approx(float(by_definition), rel=1e-12)


def test_the_chosen_marglik_precision_is_the_maximum():
    model, x, y = softmax_regression(seed=1)
    laplace = fitted(model, x, y, 1.0)
    best = laplace.marglik_precision()
    grid = [best * math.exp(k / 200) for k in range(-400, 401)]
    values = [laplace.log_marginal_likelihood(x, y, d) for d in grid]
    assert grid[max(range(len(grid)), key=values.__getitem__)] == pytest.approx(best, rel=6e-3)


def test_marglik_without_an_interior_maximum_is_an_error_that_says_so():
    model, x, y = softmax_regression()
    laplace = fitted(model, x, y, 1.0)
    laplace.fisher_total.zero_()  # no curvature: the evidence rises as δ → 0
    with pytest.raises(ValueError, match=r"no maximum inside .* use prior_fit='val_nll'"):
        laplace.marglik_precision()


def test_glm_probit_on_softmax_regression_matches_the_closed_form():
    model, x, y = softmax_regression()
    laplace = fitted(model, x, y, 2.0)
    var_w, var_b = laplace.variances()
    v = x.square() @ var_w.t() + var_b  # (N, C)
    expected = torch.log_softmax(model(x) / (1 + math.pi / 8 * v).sqrt(), dim=-1)
    got = laplace.predictive_log_probs(x, "glm_probit")
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def expected_softmax(mean: np.ndarray, var: np.ndarray, nodes: int = 24) -> np.ndarray:
    """E[softmax(f)] for f ~ N(mean, diag var), per row, by Gauss-Hermite quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)  # ∫ g(z) N(z; 0, 1) dz ≈ Σ w g(z)/√(2π)
    w = w / w.sum()
    classes = mean.shape[1]
    grid = np.stack(np.meshgrid(*[z] * classes, indexing="ij"), -1).reshape(-1, classes)
    weight = np.prod(np.stack(np.meshgrid(*[w] * classes, indexing="ij"), -1), -1).reshape(-1)
    f = mean[:, None, :] + np.sqrt(var)[:, None, :] * grid[None]
    soft = np.exp(f - f.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    return np.einsum("k,nkc->nc", weight, soft)


@pytest.mark.parametrize("mode", ["glm_mc", "sample"])
def test_on_a_linear_model_glm_mc_and_sampling_give_the_exact_expectation(mode):
    model, x, y = softmax_regression()
    laplace = fitted(model, x, y, 0.5)
    var_w, var_b = laplace.variances()
    v = (x.square() @ var_w.t() + var_b).numpy()  # independent logits: each has its own weights
    exact = expected_softmax(model(x).detach().numpy(), v)
    draws = 20_000
    got = laplace.predictive_log_probs(x, mode, draws, torch.Generator().manual_seed(0)).exp()
    # A probability's draws have SD ≤ 0.5, so the estimate's SE is ≤ 0.5/√20000 ≈ 0.0035.
    error = np.abs(got.numpy() - exact)
    assert error.max() < 5 * 0.0035
    assert error.mean() < 0.0035


def test_glm_mc_draws_are_the_jacobian_times_the_noise():
    model = tiny_mlp()
    x = torch.randn(5, 5, dtype=torch.float64)
    variances = [torch.full_like(p, 0.01) for p in model.parameters()]
    got = mc_log_probs(model, x, variances, 1, torch.Generator().manual_seed(3))
    noise_source = torch.Generator().manual_seed(3)
    eps = [torch.randn(p.shape, generator=noise_source, dtype=p.dtype) for p in model.parameters()]
    params = dict(model.named_parameters())
    jac = torch.autograd.functional.jacobian(
        lambda *ws: torch.func.functional_call(model, dict(zip(params, ws, strict=True)), (x,)),
        tuple(p.detach() for p in params.values()),
    )
    change = sum(
        (j.reshape(*j.shape[:2], -1) @ (0.1 * e).reshape(-1)) for j, e in zip(jac, eps, strict=True)
    )
    expected = torch.log_softmax(model(x) + change, dim=-1)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [tiny_mlp, tiny_cnn2d])
def test_logit_variances_by_layer_rules_match_per_example_jacobians(make):
    model = make()
    x = inputs_for(model, 7)
    torch.manual_seed(4)
    variances = [torch.rand_like(p) * 0.1 for p in model.parameters()]
    _, fast = logit_variances(model, x, variances)
    flat = torch.cat([v.reshape(-1) for v in variances])[:, None]
    _, slow = _by_jacobians(model, x, flat)
    torch.testing.assert_close(fast, slow[..., 0], rtol=1e-10, atol=1e-14)
    stacked = torch.stack([flat[:, 0], 2 * flat[:, 0]], dim=1)
    _, both = logit_variances(model, x, stacked)
    torch.testing.assert_close(both[..., 1], 2 * fast, rtol=1e-10, atol=1e-14)


def test_the_val_nll_search_takes_the_grid_minimum_and_an_unfitted_laplace_is_map():
    model, x, y = softmax_regression(n=60, seed=2)
    laplace = Laplace(model, n_data=40)
    for mode in ("glm_probit", "glm_mc", "sample", "mean"):
        torch.testing.assert_close(
            laplace.predictive_log_probs(x, mode), torch.log_softmax(model(x), -1)
        )
    laplace.fit_curvature(x[:40], y[:40])
    best, scores = laplace.val_nll_precision(x[40:], y[40:], "glm_probit")
    assert list(scores) == list(PRIOR_PRECISION_GRID)
    assert best == min(scores, key=scores.__getitem__)
    laplace.set_prior_precision(best)
    nll = -laplace.predictive_log_probs(x[40:], "glm_probit").gather(1, y[40:, None]).mean()
    assert float(nll) == pytest.approx(scores[best], rel=1e-12)


def test_laplace_in_fit_trains_map_and_fits_the_posterior_after_the_last_epoch():
    small = dict(dataset="iris", model_options={"hidden": [16]}, epochs=3, device="cpu")
    laplace = fit({**small, "method": "laplace"})
    map_run = fit({**small, "method": "map"})
    for before, reference in zip(laplace.history[:-1], map_run.history[:-1], strict=True):
        assert before["val_nll"] == reference["val_nll"]  # the MAP network until then
        assert "posterior_prior_precision" not in before
    last = laplace.metrics
    assert last["posterior_prior_precision"] in PRIOR_PRECISION_GRID
    assert last["test_nll_at_mean"] == map_run.metrics["test_nll"]
    assert laplace.config.predict == "glm_probit"
    assert bool(laplace.posterior.fitted)


def test_a_conv_model_from_the_zoo_takes_the_rule_path():
    model = build_model("cnn", (1, 8, 8), 3, channels=[2, 3]).double().eval()
    params = [p for p in model.parameters() if p.requires_grad]
    assert per_example_obstacle(model, params) is None and _rules_cover(model)
