"""Variational Laplace: the Taylor-expanded ELBO as a deterministic training objective.

Per datapoint, on a minibatch of B out of N datapoints::

    loss = (1/B) Σ_i −log p(y_i|x_i,μ) + (1/(2B)) Σ_λ σ_λ² F̂_λ + (kl_weight/N) KL(q‖p)

with F̂ a batch-sum diagonal Fisher estimate (see :mod:`gradreg.fisher`) that stays
differentiable in μ, and KL(q‖p) between q = N(μ, diag σ²) and the prior N(0, s² I).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gradreg.fisher import FisherPass, check_estimator, check_labels, trainable_parameters
from gradreg.posterior import (
    VARIANCE_FAMILIES,
    DiagonalVariance,
    UniformVariance,
    check_positive,
    gaussian_kl,
)

PREDICT_MODES = ("mean", "sample")
DEFAULT_VARIANCE_LR_FACTOR = 10.0
DEFAULT_INIT_VARIANCE_FACTOR = 1e-4


@dataclass(frozen=True)
class LossTerms:
    """The objective and its parts, each a scalar tensor (``loss`` is differentiable)."""

    loss: Tensor
    nll: Tensor
    sqgrad: Tensor
    kl: Tensor
    logits: Tensor

    def as_floats(self, prefix: str = "train_") -> dict[str, float]:
        return {
            f"{prefix}loss": float(self.loss.detach()),
            f"{prefix}nll": float(self.nll),
            f"{prefix}sqgrad": float(self.sqgrad),
            f"{prefix}kl": float(self.kl),
        }


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


class VariationalLaplace(nn.Module):
    """A factorised Gaussian posterior over ``model``'s weights, trained with the VL objective.

    The model's own parameters are the posterior means μ. ``variance="diagonal"`` learns one
    σ² per weight (starting at ``init_variance``, default ``1e-4 · prior_variance``);
    ``variance="uniform"`` uses σ = ``noise_scale`` for every weight, fixed unless
    ``learn_noise_scale=True``. ``fisher`` picks the estimator of F̂; with
    ``empirical_fisher=True`` it uses the true labels instead of labels sampled from the model.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        n_data: int,
        prior_variance: float = 1.0,
        variance: str = "diagonal",
        noise_scale: float | None = None,
        init_variance: float | None = None,
        fisher: str = "sampled",
        kl_weight: float = 1.0,
        learn_noise_scale: bool = False,
        empirical_fisher: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.n_data = _check_count("n_data", n_data)
        self.prior_variance = check_positive("prior_variance", prior_variance)
        self.fisher = check_estimator(fisher)
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, int | float):
            raise TypeError(f"kl_weight must be a number, got {kl_weight!r}")
        if not math.isfinite(kl_weight) or kl_weight < 0:
            raise ValueError(f"kl_weight must be finite and >= 0, got {kl_weight!r}")
        self.kl_weight = float(kl_weight)
        self.empirical_fisher = bool(empirical_fisher)
        params = trainable_parameters(model)
        self._names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.variance = variance
        if variance == "diagonal":
            if noise_scale is not None or learn_noise_scale:
                raise ValueError(
                    "noise_scale and learn_noise_scale belong to variance='uniform'; "
                    "the diagonal posterior starts from init_variance"
                )
            if init_variance is None:
                init_variance = DEFAULT_INIT_VARIANCE_FACTOR * self.prior_variance
            self.posterior: DiagonalVariance | UniformVariance = DiagonalVariance(
                params, init_variance
            )
        elif variance == "uniform":
            if init_variance is not None:
                raise ValueError(
                    "init_variance belongs to variance='diagonal'; with variance='uniform' "
                    "σ² = noise_scale²"
                )
            if noise_scale is None:
                raise ValueError(
                    "variance='uniform' needs noise_scale (σ of every weight), e.g. 0.01"
                )
            self.posterior = UniformVariance(params, noise_scale, learn=learn_noise_scale)
        else:
            raise ValueError(
                f"unknown variance family {variance!r}; accepted: {', '.join(VARIANCE_FAMILIES)}"
            )

    # ---------------------------------------------------------------- objective
    def loss(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> LossTerms:
        """The VL objective on one minibatch; ``generator`` seeds the sampled Fisher labels."""
        fisher_pass = FisherPass(self.model, self.fisher)
        with torch.enable_grad():
            logits = fisher_pass.forward(x)
            check_labels(y, logits, "y")
            log_probs = fisher_pass.log_probs
            assert log_probs is not None
            batch = logits.shape[0]
            nll = -log_probs.gather(1, y[:, None]).mean()
            fisher = fisher_pass.estimate_flat(
                y if self.empirical_fisher else None, generator=generator, create_graph=True
            )
            weighted, kl_variance = self.posterior.regulariser_terms(fisher, self.prior_variance)
            sqgrad = weighted / (2 * batch)
            kl_mean = sum(mu.square().sum() for mu in fisher_pass.params) / (
                2 * self.prior_variance
            )
            kl = (self.kl_weight / self.n_data) * (kl_variance + kl_mean)
            total = nll + sqgrad + kl
        return LossTerms(total, nll.detach(), sqgrad.detach(), kl.detach(), logits.detach())

    # ---------------------------------------------------------------- posterior
    def kl(self, means: Sequence[Tensor] | None = None) -> Tensor:
        """KL(q‖p) in full (not divided by N); ``means`` defaults to the model's parameters."""
        means = trainable_parameters(self.model) if means is None else means
        return gaussian_kl(self.posterior.variances(), means, self.prior_variance)

    def variances(self) -> list[Tensor]:
        """σ² for every trainable parameter, shaped like it."""
        params = trainable_parameters(self.model)
        return [
            v.detach().expand_as(p).clone()
            for v, p in zip(self.posterior.variances(), params, strict=True)
        ]

    @property
    def noise_scale(self) -> float | None:
        """σ of every weight for ``variance='uniform'``; None for the diagonal family."""
        if isinstance(self.posterior, UniformVariance):
            return self.posterior.noise_scale
        return None

    def variance_summary(self) -> dict[str, dict[str, float]]:
        """Per-parameter σ statistics (mean, min, max of σ), for diagnostics."""
        summary = {}
        for name, var in zip(self._names, self.variances(), strict=True):
            std = var.sqrt()
            summary[name] = {
                "std_mean": float(std.mean()),
                "std_min": float(std.min()),
                "std_max": float(std.max()),
            }
        return summary

    def param_groups(self, lr: float, variance_lr: float | None = None) -> list[dict]:
        """Optimiser groups: the means at ``lr``, learned variances at ``variance_lr``.

        ``variance_lr`` defaults to 10 × ``lr``: variances converge slowly (Unlu & Aitchison).
        """
        lr = check_positive("lr", lr)
        groups = [{"params": trainable_parameters(self.model), "lr": lr, "name": "means"}]
        if self.posterior.learnable:
            variance_lr = (
                DEFAULT_VARIANCE_LR_FACTOR * lr
                if variance_lr is None
                else check_positive("variance_lr", variance_lr)
            )
            groups.append(
                {
                    "params": list(self.posterior.parameters()),
                    "lr": variance_lr,
                    "name": "variances",
                }
            )
        return groups

    # ---------------------------------------------------------------- prediction
    @torch.no_grad()
    def predictive_log_probs(
        self,
        x: Tensor,
        mode: str = "mean",
        n_samples: int = 32,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """log p(y|x) in float64: at μ (``mean``) or averaged over weights drawn from q."""
        if mode not in PREDICT_MODES:
            raise ValueError(f"unknown predict mode {mode!r}; accepted: {', '.join(PREDICT_MODES)}")
        _check_count("n_samples", n_samples)
        was_training = self.model.training
        self.model.eval()
        try:
            if mode == "mean":
                return torch.log_softmax(self.model(x).double(), dim=-1)
            means = trainable_parameters(self.model)
            stds = [v.sqrt() for v in self.posterior.variances()]
            draws = []
            for _ in range(n_samples):
                weights = {
                    name: mu
                    + sd
                    * torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
                    for name, mu, sd in zip(self._names, means, stds, strict=True)
                }
                logits = functional_call(self.model, weights, (x,))
                draws.append(torch.log_softmax(logits.double(), dim=-1))
            return torch.logsumexp(torch.stack(draws), dim=0) - math.log(n_samples)
        finally:
            self.model.train(was_training)

    def predict(
        self,
        x: Tensor,
        mode: str = "mean",
        n_samples: int = 32,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Class probabilities in the model's dtype: ``mean`` at μ, ``sample`` averaged over q."""
        dtype = trainable_parameters(self.model)[0].dtype
        return self.predictive_log_probs(x, mode, n_samples, generator).exp().to(dtype)
