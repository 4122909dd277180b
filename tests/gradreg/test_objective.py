"""The VL objective, its gradients and its predictions against independent float64 math."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence
from torch.func import functional_call, grad, vmap

from gradreg import VariationalLaplace
from gradreg.curvature.fisher import unflatten
from gradreg.posteriors.gaussian import gaussian_kl
from tests.helpers.oracles import inputs_for, jacobian_fisher, tiny_cnn2d, tiny_mlp

N_DATA, PRIOR = 50, 0.7


def _batch(model, batch=6, seed=2):
    x = inputs_for(model, batch)
    n_classes = model(x[:1]).shape[1]
    y = torch.randint(0, n_classes, (batch,), generator=torch.Generator().manual_seed(seed))
    return x, y


def _sampled_labels(model, x, seed):
    # The documented sampling rule: one torch.multinomial draw per row from softmax(logits).
    probs = torch.softmax(model(x).detach().float(), dim=-1)
    return torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)


def _reference_loss(model, params, log_var, x, y, fisher, fisher_labels, kl_weight):
    """The objective written out directly in torch.func terms."""
    batch = x.shape[0]
    log_probs = torch.log_softmax(functional_call(model, params, (x,)), dim=-1)
    nll = -log_probs[torch.arange(batch), y].mean()
    if fisher == "sampled":

        def picked(p):
            lp = torch.log_softmax(functional_call(model, p, (x,)), dim=-1)
            return lp[torch.arange(batch), fisher_labels].sum()

        fisher_values = {n: g.square() for n, g in grad(picked)(params).items()}
    else:
        fisher_values = jacobian_fisher(model, params, x, fisher_labels)
    var = {n: lv.exp() for n, lv in log_var.items()}
    sqgrad = sum((var[n] * fisher_values[n]).sum() for n in params) / (2 * batch)
    kl = sum(
        ((var[n] + params[n] ** 2) / (2 * PRIOR) - 0.5 - 0.5 * torch.log(var[n] / PRIOR)).sum()
        for n in params
    )
    return nll, sqgrad, kl_weight * kl / N_DATA


@pytest.mark.parametrize(
    ("make_model", "fisher", "empirical"),
    [
        (tiny_mlp, "exact", False),
        (tiny_mlp, "per_example", True),
        (tiny_mlp, "per_example", False),
        (tiny_mlp, "sampled", False),
        (tiny_cnn2d, "exact", False),
        (tiny_cnn2d, "per_example", False),
    ],
)
def test_diagonal_loss_and_gradients_match_reference(make_model, fisher, empirical):
    model = make_model()
    x, y = _batch(model)
    vl = VariationalLaplace(
        model,
        n_data=N_DATA,
        prior_variance=PRIOR,
        variance="diagonal",
        fisher=fisher,
        kl_weight=0.3,
        empirical_fisher=empirical,
    ).double()
    with torch.no_grad():  # distinct variances per weight, so a mix-up would show
        vl.family.log_variance.uniform_(-4.0, -1.0, generator=torch.Generator().manual_seed(7))
    seed = 11
    terms = vl.loss(x, y, generator=torch.Generator().manual_seed(seed))
    terms.loss.backward()

    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    flat_log_var = vl.family.log_variance.detach()
    pieces = unflatten(flat_log_var, list(model.parameters()))
    log_var = {n: lv.clone().requires_grad_() for n, lv in zip(names, pieces, strict=True)}
    if fisher == "exact":
        fisher_labels = None
    elif empirical:
        fisher_labels = y
    else:
        fisher_labels = _sampled_labels(model, x, seed)
    nll, sqgrad, kl = _reference_loss(model, params, log_var, x, y, fisher, fisher_labels, 0.3)
    for got, want in [(terms.nll, nll), (terms.sqgrad, sqgrad), (terms.kl, kl)]:
        assert torch.allclose(got, want.detach(), rtol=1e-10, atol=1e-14)
    total = nll + sqgrad + kl
    grads = torch.autograd.grad(total, [*params.values(), *log_var.values()], retain_graph=True)
    got_grads = [p.grad for p in model.parameters()]
    got_grads += unflatten(vl.family.log_variance.grad, list(model.parameters()))
    for got, want in zip(got_grads, grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-12)
    # The regulariser's gradient in μ is not zero: F̂ stayed differentiable.
    mean_grad_of_sqgrad = torch.autograd.grad(sqgrad, list(params.values()))
    assert max(float(g.abs().max()) for g in mean_grad_of_sqgrad) > 1e-8


def test_uniform_loss_is_sigma_squared_times_fisher_sum():
    model = tiny_mlp()
    x, y = _batch(model)
    vl = VariationalLaplace(
        model,
        n_data=N_DATA,
        prior_variance=PRIOR,
        variance="uniform",
        noise_scale=0.05,
        fisher="exact",
    )
    terms = vl.loss(x, y)
    params = {n: p.detach() for n, p in model.named_parameters()}
    fisher_sum = sum(f.sum() for f in jacobian_fisher(model, params, x).values())
    assert torch.allclose(terms.sqgrad, 0.05**2 * fisher_sum / (2 * len(x)), rtol=1e-10)
    n_weights = sum(p.numel() for p in model.parameters())
    sq_norm = sum(p.square().sum() for p in model.parameters())
    s2, v = PRIOR, 0.05**2
    kl = n_weights * (v / (2 * s2) - 0.5 - 0.5 * math.log(v / s2)) + sq_norm / (2 * s2)
    assert torch.allclose(terms.kl, kl.detach() / N_DATA, rtol=1e-10)
    assert torch.allclose(terms.loss, terms.nll + terms.sqgrad + terms.kl, rtol=1e-12)


def test_gradient_agrees_with_finite_differences():
    model = tiny_mlp()
    x, y = _batch(model)
    vl = VariationalLaplace(
        model, n_data=N_DATA, variance="uniform", noise_scale=0.3, fisher="exact"
    )
    vl.loss(x, y).loss.backward()
    direction = [
        torch.randn_like(p, generator=torch.Generator().manual_seed(i))
        for i, p in enumerate(model.parameters())
    ]
    analytic = sum((p.grad * d).sum() for p, d in zip(model.parameters(), direction, strict=True))
    h = 1e-5
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(model.parameters(), direction, strict=True):
                p.add_(sign * h * d)
        values.append(vl.loss(x, y).loss.detach())
        with torch.no_grad():
            for p, d in zip(model.parameters(), direction, strict=True):
                p.sub_(sign * h * d)
    numeric = (values[0] - values[1]) / (2 * h)
    assert abs(float(analytic) - float(numeric)) < 1e-7 * max(1.0, abs(float(numeric)))


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    means = [
        torch.randn(3, 4, generator=g, dtype=torch.float64),
        torch.randn(5, generator=g, dtype=torch.float64),
    ]
    variances = [
        torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.1,
        torch.tensor(0.3, dtype=torch.float64),
    ]
    prior = Normal(torch.tensor(0.0, dtype=torch.float64), math.sqrt(1.7))
    want = sum(
        kl_divergence(Normal(m, v.sqrt().expand_as(m)), prior).sum()
        for m, v in zip(means, variances, strict=True)
    )
    assert torch.allclose(gaussian_kl(variances, means, 1.7), want, rtol=1e-12)


def test_taylor_error_shrinks_like_sigma_to_the_fourth():
    """For softmax regression the Fisher is the negative Hessian, so the VL data term is the
    second-order expansion of E_q[log p]: what is left over is O(σ⁴)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 4).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    shapes = [(n, p.shape) for n, p in model.named_parameters()]
    mu = torch.cat([p.detach().flatten() for p in model.parameters()])

    def log_lik(flat):
        parts, start = {}, 0
        for name, shape in shapes:
            parts[name] = flat[start : start + math.prod(shape)].reshape(shape)
            start += math.prod(shape)
        log_probs = torch.log_softmax(functional_call(model, parts, (x,)), dim=-1)
        return log_probs[torch.arange(len(y)), y].sum()

    hessian = torch.autograd.functional.hessian(log_lik, mu)
    g = torch.Generator().manual_seed(1)
    errors, stderrs = [], []
    for sigma in (0.4, 0.2, 0.1):
        vl = VariationalLaplace(
            model, n_data=6, variance="uniform", noise_scale=sigma, fisher="exact"
        )
        terms = vl.loss(x, y)
        vl_data_term = -len(y) * (terms.nll + terms.sqgrad)
        # E_q[log p] by Monte Carlo: antithetic pairs cancel odd orders, and the quadratic
        # term (whose expectation ½σ² tr H is known) is a control variate; both keep it unbiased.
        eps = sigma * torch.randn(40_000, mu.numel(), generator=g, dtype=torch.float64)
        pairs = 0.5 * (vmap(log_lik)(mu + eps) + vmap(log_lik)(mu - eps))
        residual = pairs - 0.5 * torch.einsum("ni,ij,nj->n", eps, hessian, eps)
        expected = residual.mean() + 0.5 * sigma**2 * torch.trace(hessian)
        errors.append(float(expected - vl_data_term))
        stderrs.append(float(residual.std() / math.sqrt(len(residual))))
    for err, se in zip(errors, stderrs, strict=True):
        assert abs(err) > 8 * se, (errors, stderrs)  # the Monte Carlo resolves the error
    for big, small in itertools.pairwise(errors):
        assert 3.5 < math.log2(big / small) < 4.5, errors


def test_learned_variances_reach_the_laplace_value_when_means_are_fixed():
    """With the means held still and the exact full-batch Fisher, the VL optimum in σ² is
    1/(F + 1/s²), the diagonal Laplace variance."""
    model = tiny_mlp(n_in=3, n_hidden=4)
    x, y = _batch(model, batch=8)
    vl = VariationalLaplace(
        model, n_data=8, prior_variance=PRIOR, fisher="exact", init_variance=0.01
    ).double()
    optimiser = torch.optim.Adam(vl.family.parameters(), lr=0.1)
    for _ in range(300):
        optimiser.zero_grad()
        vl.loss(x, y).loss.backward()
        optimiser.step()
    params = {n: p.detach() for n, p in model.named_parameters()}
    laplace = [1 / (f + 1 / PRIOR) for f in jacobian_fisher(model, params, x).values()]
    for got, want in zip(vl.variances(), laplace, strict=True):
        assert torch.allclose(got, want, rtol=2e-3)


def test_variances_groups_and_summary():
    model = tiny_mlp()
    diagonal = VariationalLaplace(model, n_data=10, prior_variance=2.0)
    assert all(torch.allclose(v, torch.full_like(v, 2e-4)) for v in diagonal.variances())
    assert [v.shape for v in diagonal.variances()] == [p.shape for p in model.parameters()]
    groups = diagonal.param_groups(lr=1e-3)
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    assert diagonal.param_groups(lr=1e-3, variance_lr=0.5)[1]["lr"] == 0.5
    summary = diagonal.variance_summary()
    assert set(summary) == {n for n, _ in model.named_parameters()}
    assert summary["0.weight"]["std_mean"] == pytest.approx(math.sqrt(2e-4))

    uniform = VariationalLaplace(model, n_data=10, variance="uniform", noise_scale=0.02)
    assert uniform.noise_scale == pytest.approx(0.02)
    assert all(torch.allclose(v, torch.full_like(v, 4e-4)) for v in uniform.variances())
    assert len(uniform.param_groups(lr=1e-3)) == 1
    learned = VariationalLaplace(
        model, n_data=10, variance="uniform", noise_scale=0.02, learn_noise_scale=True
    )
    assert len(learned.param_groups(lr=1e-3)) == 2
    assert diagonal.noise_scale is None


def test_predict_mean_and_sample():
    model = tiny_mlp()
    x, _ = _batch(model, batch=5)
    vl = VariationalLaplace(model, n_data=10, variance="uniform", noise_scale=1e-6)
    model.train()
    mean = vl.predict(x)
    assert model.training  # prediction restores the mode it found
    assert torch.allclose(mean, torch.softmax(model(x), dim=-1), rtol=1e-12)
    assert mean.dtype == torch.float64
    near = vl.predict(x, mode="sample", n_samples=4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(near, mean, atol=1e-5)
    wide = VariationalLaplace(model, n_data=10, variance="uniform", noise_scale=1.0)
    a = wide.predict(x, mode="sample", n_samples=8, generator=torch.Generator().manual_seed(0))
    b = wide.predict(x, mode="sample", n_samples=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert torch.allclose(a.sum(1), torch.ones(5, dtype=torch.float64))
    assert (a - mean).abs().max() > 1e-2  # weight noise of σ = 1 visibly moves the predictive


def test_bad_arguments_are_named():
    model = tiny_mlp()
    with pytest.raises(ValueError, match="n_data must be a positive integer, got 0"):
        VariationalLaplace(model, n_data=0)
    with pytest.raises(TypeError, match="n_data must be a positive integer"):
        VariationalLaplace(model, n_data=10.0)
    with pytest.raises(ValueError, match="prior_variance must be a positive finite number"):
        VariationalLaplace(model, n_data=10, prior_variance=-1.0)
    with pytest.raises(ValueError, match="noise_scale must be a positive finite number"):
        VariationalLaplace(model, n_data=10, variance="uniform", noise_scale=0.0)
    with pytest.raises(ValueError, match="needs noise_scale"):
        VariationalLaplace(model, n_data=10, variance="uniform")
    with pytest.raises(ValueError, match="belong to variance='uniform'"):
        VariationalLaplace(model, n_data=10, noise_scale=0.1)
    with pytest.raises(ValueError, match="init_variance belongs to variance='diagonal'"):
        VariationalLaplace(model, n_data=10, variance="uniform", noise_scale=0.1, init_variance=1.0)
    with pytest.raises(ValueError, match="init_variance must be a positive finite number"):
        VariationalLaplace(model, n_data=10, init_variance=float("nan"))
    with pytest.raises(
        ValueError, match="unknown variance family 'full'; accepted: diagonal, uniform"
    ):
        VariationalLaplace(model, n_data=10, variance="full")
    with pytest.raises(ValueError, match="unknown Fisher estimator 'kfac'"):
        VariationalLaplace(model, n_data=10, fisher="kfac")
    with pytest.raises(ValueError, match="kl_weight must be finite and >= 0"):
        VariationalLaplace(model, n_data=10, kl_weight=-0.1)
    with pytest.raises(ValueError, match="no trainable parameters"):
        VariationalLaplace(nn.ReLU(), n_data=10)
    vl = VariationalLaplace(model, n_data=10)
    x, _ = _batch(model, batch=3)
    with pytest.raises(ValueError, match=r"y contain 5, outside the model's classes 0\.\.2"):
        vl.loss(x, torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="unknown predict mode 'median'; accepted: mean, sample"):
        vl.predict(x, mode="median")
    with pytest.raises(ValueError, match="n_samples must be a positive integer, got 0"):
        vl.predict(x, mode="sample", n_samples=0)
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        vl.param_groups(lr=0.0)


@pytest.mark.parametrize("variance", ["diagonal", "uniform"])
def test_loss_kl_term_equals_the_reference_kl(variance):
    model = tiny_mlp()
    x, y = _batch(model)
    vl = VariationalLaplace(
        model,
        n_data=N_DATA,
        prior_variance=PRIOR,
        variance=variance,
        kl_weight=0.5,
        noise_scale=0.1 if variance == "uniform" else None,
    )
    if variance == "diagonal":
        with torch.no_grad():
            vl.family.log_variance.uniform_(-6.0, 0.0, generator=torch.Generator().manual_seed(3))
    terms = vl.loss(x, y)
    assert torch.allclose(terms.kl, 0.5 * vl.kl().detach() / N_DATA, rtol=1e-10)
