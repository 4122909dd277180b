"""MAP, sampling VI and post-hoc Laplace against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradreg import VariationalLaplace
from gradreg.config import TrainConfig
from gradreg.posteriors.baselines import MAP, SamplingVI
from gradreg.posteriors.laplace import Laplace
from gradreg.train import evaluate, fit
from tests.helpers.oracles import brute_force_fisher, inputs_for, tiny_cnn2d, tiny_mlp


def _batch(model, batch=6, seed=2):
    x = inputs_for(model, batch)
    n_classes = model(x[:1]).shape[1]
    y = torch.randint(0, n_classes, (batch,), generator=torch.Generator().manual_seed(seed))
    return x, y


def test_map_is_vl_in_the_limit_of_zero_variance():
    model = tiny_mlp()
    x, y = _batch(model)
    map_ = MAP(model, n_data=40, prior_variance=0.5)
    map_terms = map_.loss(x, y)
    map_grads = torch.autograd.grad(map_terms.loss, list(model.parameters()))
    vl = VariationalLaplace(
        model, n_data=40, prior_variance=0.5, variance="uniform", noise_scale=1e-7, fisher="exact"
    )
    vl_terms = vl.loss(x, y)
    vl_grads = torch.autograd.grad(vl_terms.loss, list(model.parameters()))
    assert torch.allclose(map_terms.nll, vl_terms.nll, rtol=1e-12)
    for a, b in zip(map_grads, vl_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    # The KLs differ only by the σ-part, which does not depend on μ.
    n = sum(p.numel() for p in model.parameters())
    shifted = 2 * math.log(1e-7) - math.log(0.5)
    sigma_part = n * 0.5 * (math.exp(shifted) - 1 - shifted)
    assert float(vl_terms.kl - map_terms.kl) == pytest.approx(sigma_part / 40, rel=1e-9)
    assert float(map_terms.sqgrad) == 0.0
    assert torch.equal(map_.predict(x, mode="sample"), map_.predict(x, mode="mean"))


def _gauss_hermite_expected_nll(model: nn.Linear, family_vars, x, y) -> float:
    """E_q[−log p(y|x,w)] for a 2-class linear model, exactly (to quadrature precision).

    The logit difference d = z_other − z_y is Gaussian under q, and −log p(y) = softplus(d).
    """
    w_var, b_var = (
        v.detach().expand_as(p) for v, p in zip(family_vars, model.parameters(), strict=True)
    )
    nodes, weights = np.polynomial.hermite.hermgauss(120)
    total = 0.0
    for xi, yi in zip(x, y, strict=True):
        other = 1 - int(yi)
        sign = torch.zeros(2, dtype=torch.float64)
        sign[other], sign[int(yi)] = 1.0, -1.0
        mean = float(sign @ (model.weight.detach() @ xi + model.bias.detach()))
        var = float(w_var.T.matmul(torch.ones(2, dtype=torch.float64)) @ xi.square()) + float(
            b_var.sum()
        )
        values = np.logaddexp(0.0, mean + math.sqrt(2 * var) * nodes)
        total += float(np.sum(weights * values) / math.sqrt(math.pi))
    return total / len(y)


@pytest.mark.parametrize("local", [True, False])
def test_sampling_vi_elbo_estimate_is_unbiased(local):
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    vi = SamplingVI(model, n_data=50, prior_variance=2.0, local_reparameterisation=local)
    with torch.no_grad():
        vi.family.log_variance.uniform_(-3.0, 0.0, generator=torch.Generator().manual_seed(1))
    exact_nll = _gauss_hermite_expected_nll(model, vi.family.variances(), x, y)
    g = torch.Generator().manual_seed(2)
    estimates = torch.tensor([float(vi.loss(x, y, generator=g).nll) for _ in range(4000)])
    stderr = float(estimates.std()) / math.sqrt(len(estimates))
    assert abs(float(estimates.mean()) - exact_nll) < 4 * stderr, (estimates.mean(), exact_nll)
    terms = vi.loss(x, y, generator=g)
    assert torch.allclose(terms.kl, vi.kl().detach() / 50)
    assert torch.allclose(terms.loss.detach(), terms.nll + terms.kl)


def test_sampling_vi_trains_means_and_variances_through_mixed_layers():
    model = tiny_cnn2d()
    x, y = _batch(model)
    vi = SamplingVI(model, n_data=30, mc_samples=3)
    vi.loss(x, y, generator=torch.Generator().manual_seed(0)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert vi.family.log_variance.grad.abs().sum() > 0
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize(("estimator", "empirical"), [("exact", False), ("per_example", True)])
def test_laplace_variances_are_inverse_fisher_plus_prior_precision(estimator, empirical):
    model = tiny_mlp()
    x, y = _batch(model, batch=10)
    laplace = Laplace(
        model, n_data=10, prior_variance=0.3, fisher=estimator, empirical_fisher=empirical
    )
    laplace.fit_curvature(x, y)
    fisher = brute_force_fisher(model, x, y if empirical else None)
    for got, f in zip(laplace.variances(), fisher, strict=True):
        assert torch.allclose(got, 1 / (f + 1 / 0.3), rtol=1e-10)
    assert not laplace.family.learnable
    with pytest.raises(ValueError, match="whole training set: got 4 examples"):
        laplace.fit_curvature(x[:4], y[:4])


SMALL = dict(
    dataset="iris",
    model_options={"hidden": [16]},
    epochs=3,
    batch_size=32,
    device="cpu",
    predict="sample",
    n_samples=8,
)


def test_laplace_predicts_like_map_at_the_mean_and_differs_when_sampling():
    map_result = fit({**SMALL, "method": "map"})
    laplace = fit({**SMALL, "method": "laplace"})
    config = TrainConfig(**{**SMALL, "method": "laplace", "predict": "mean"})
    data_x, data_y = _iris_test()
    mean_laplace, _ = evaluate(laplace.posterior, data_x, data_y, config, "test_")
    mean_map, _ = evaluate(map_result.posterior, data_x, data_y, config, "test_")
    assert mean_laplace == mean_map
    assert laplace.metrics["test_nll"] != map_result.metrics["test_nll"]
    assert laplace.metrics["posterior_std_mean"] > 0 == map_result.metrics["posterior_std_mean"]


def _iris_test():
    from gradreg.data import load_dataset

    data = load_dataset("iris")
    return data.x_test, data.y_test


def test_every_method_trains_through_fit():
    for method, extra in [
        ("map", {}),
        ("mcvi", {"mc_samples": 2}),
        ("laplace", {"fisher": "per_example"}),
    ]:
        result = fit({**SMALL, "method": method, **extra})
        assert len(result.history) == 3
        assert math.isfinite(result.metrics["test_nll"])


def test_method_settings_are_checked():
    assert TrainConfig(method="laplace").fisher == "exact"
    assert TrainConfig(method="mcvi").mc_samples == 1
    assert TrainConfig(method="vl").variance == "diagonal"
    assert TrainConfig(method="map").variance is None
    with pytest.raises(
        ValueError, match="method 'map' does not use fisher, noise_scale; remove them"
    ):
        TrainConfig(method="map", noise_scale=0.1, fisher="exact")
    with pytest.raises(ValueError, match="method 'laplace' does not use variance"):
        TrainConfig(method="laplace", variance="uniform")
    with pytest.raises(ValueError, match="method 'vl' does not use mc_samples"):
        TrainConfig(method="vl", mc_samples=4)
    with pytest.raises(ValueError, match="method 'mcvi' does not use empirical_fisher"):
        TrainConfig(method="mcvi", empirical_fisher=True)
    with pytest.raises(ValueError, match="mc_samples must be >= 1"):
        TrainConfig(method="mcvi", mc_samples=0)
