"""Variational Laplace: the Taylor-expanded ELBO as a deterministic training objective.

Per datapoint, on a minibatch of B out of N datapoints::

    loss = (1/B) Σ_i −log p(y_i|x_i,μ) + (1/(2B)) Σ_λ σ_λ² F̂_λ + (kl_weight/N) KL(q‖p)

with F̂ a batch-sum diagonal Fisher estimate (see :mod:`gradreg.curvature.fisher`) that stays
differentiable in μ, and KL(q‖p) between q = N(μ, diag σ²) and the prior N(0, s² I).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradreg.curvature.finite_difference import (
    KinkPattern,
    RngReplay,
    Variant,
    forward_epsilon,
    nll_and_score,
    objective_gradient,
)
from gradreg.curvature.fisher import (
    FisherPass,
    check_estimator,
    check_labels,
    check_logits,
    sample_labels,
    trainable_parameters,
    unflatten,
)
from gradreg.methods import method_for, regulariser_grad_problem, resolve_regulariser_grad
from gradreg.posteriors.gaussian import (
    DiagonalVariance,
    GaussianPosterior,
    LossTerms,
    UniformVariance,
    weight_decay,
)

__all__ = ["LossTerms", "VariationalLaplace"]

# The method table is the defaults' one home (its two VL entries share them).
_DEFAULTS = method_for("vl").defaults


class VariationalLaplace(GaussianPosterior):
    """A factorised Gaussian posterior over ``model``'s weights, trained with the VL objective.

    The model's own parameters are the posterior means μ. ``variance="diagonal"`` learns one
    σ² per weight (starting at ``init_variance``, default ``1e-4 · prior_variance``);
    ``variance="uniform"`` uses σ = ``noise_scale`` for every weight, fixed unless
    ``learn_noise_scale=True``. ``fisher`` picks the estimator of F̂; with
    ``empirical_fisher=True`` it uses the true labels instead of labels sampled from the model.
    ``regulariser_grad`` picks how the regulariser's μ-gradient is computed: ``autograd``
    (a double backward), ``finite_difference`` (`gradreg.curvature.finite_difference`, ``sampled``
    only; its passes run in true float32, TF32 off), or ``auto``: finite differences on CUDA
    for ``sampled`` outside autocast, autograd elsewhere. The loss and its parts are the same
    numbers either way.
    """

    family: DiagonalVariance | UniformVariance
    # How the finite-difference path takes its product; benchmarks set another on an instance.
    finite_difference: Variant = Variant()

    def __init__(
        self,
        model: nn.Module,
        *,
        n_data: int,
        prior_variance: float = 1.0,
        variance: str = "diagonal",
        noise_scale: float | None = None,
        init_variance: float | None = None,
        fisher: str = _DEFAULTS["fisher"],
        kl_weight: float = 1.0,
        learn_noise_scale: bool = False,
        empirical_fisher: bool = False,
        regulariser_grad: str = _DEFAULTS["regulariser_grad"],
    ) -> None:
        super().__init__(model, n_data=n_data, prior_variance=prior_variance, kl_weight=kl_weight)
        self.fisher = check_estimator(fisher)
        problem = regulariser_grad_problem(regulariser_grad, fisher)
        if problem:
            raise ValueError(problem)
        self.regulariser_grad = regulariser_grad
        self._kinks: KinkPattern | None = None
        self.empirical_fisher = bool(empirical_fisher)
        self._use_family(
            variance,
            noise_scale=noise_scale,
            init_variance=init_variance,
            learn_noise_scale=learn_noise_scale,
        )

    def gradient_path(self, device: torch.device) -> str:
        """``autograd`` or ``finite_difference``: what ``auto`` means on ``device`` now
        (in or out of autocast; with TF32 only where its variant runs in torch's flags)."""
        if self.regulariser_grad != "auto":
            return self.regulariser_grad
        params = trainable_parameters(self.model)
        with self.finite_difference.passes():
            low_precision = forward_epsilon(self.model, params) > torch.finfo(torch.float32).eps
        return resolve_regulariser_grad("auto", self.fisher, device.type, low_precision)

    def loss(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> LossTerms:
        """The VL objective on one minibatch; ``generator`` seeds the sampled Fisher labels."""
        if self.gradient_path(x.device) == "finite_difference":
            return self._finite_difference_loss(x, y, generator)
        fisher_pass = FisherPass(self.model, self.fisher)
        with torch.enable_grad():
            logits = fisher_pass.forward(x)
            check_labels(y, logits, "y")
            log_probs = fisher_pass.log_probs
            assert log_probs is not None
            nll = -log_probs.gather(1, y[:, None]).mean()
            # A uniform σ² only needs Σ_λ F̂_λ, which skips per-weight squares where it can.
            estimate = (
                fisher_pass.estimate_total
                if isinstance(self.family, UniformVariance)
                else fisher_pass.estimate_flat
            )
            fisher = estimate(
                y if self.empirical_fisher else None, generator=generator, create_graph=True
            )
            weighted, kl_variance = self.family.regulariser_terms(fisher, self.prior_variance)
            sqgrad = weighted / (2 * logits.shape[0])
            kl_mean = weight_decay(fisher_pass.params, self.prior_variance)
            kl = (self.kl_weight / self.n_data) * (kl_variance + kl_mean)
            total = nll + sqgrad + kl
        return LossTerms(total, nll.detach(), sqgrad.detach(), kl.detach(), logits.detach())

    def _finite_difference_loss(
        self, x: Tensor, y: Tensor, generator: torch.Generator | None
    ) -> LossTerms:
        """The same loss value; its μ-gradient from `gradreg.curvature.finite_difference`.

        ``loss`` carries that gradient as a detached vector dotted with μ (adding exactly
        zero to its value), the KL's own graph, and the regulariser's σ²-gradient, which
        needs no Hessian: g̃² enters it as data.
        """
        params = trainable_parameters(self.model)
        if self._kinks is None:  # the layers are found once, not every step
            self._kinks = KinkPattern(self.model)
        rng, kinks, variant = RngReplay(x.device), self._kinks, self.finite_difference
        with variant.passes(), torch.enable_grad():
            with kinks.recording():
                logits = check_logits(self.model(x))
            check_labels(y, logits, "y")
            labels = y if self.empirical_fisher else sample_labels(logits, generator)
            nll, own_score = nll_and_score(logits, y, labels)
            grads = torch.autograd.grad(own_score, params)
            g = torch.cat([grad.reshape(-1) for grad in grads]).to(params[0].dtype)
            squares = g.square()
            fisher = squares.sum() if isinstance(self.family, UniformVariance) else squares
            weighted, kl_variance = self.family.regulariser_terms(fisher, self.prior_variance)
            sqgrad = weighted / (2 * logits.shape[0])
            kl_mean = weight_decay(params, self.prior_variance)
            kl = (self.kl_weight / self.n_data) * (kl_variance + kl_mean)
            variance = self.family.log_variance.detach().exp()
            gradient = objective_gradient(
                self.model, self._names, params, g, variance, x, y, labels, rng, kinks, variant
            )
            pieces = unflatten(gradient, params)
            # the μ-gradient, carried by a term whose value is exactly zero
            attached = torch.stack([(p * d).sum() for p, d in zip(params, pieces, strict=True)])
            attached = attached.sum()
            total = nll.detach() + sqgrad + kl + (attached - attached.detach())
        return LossTerms(total, nll.detach(), sqgrad.detach(), kl.detach(), logits.detach())
