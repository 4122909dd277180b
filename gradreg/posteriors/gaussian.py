"""The factorised Gaussian posterior q(w) = N(μ, diag σ²) over a model's weights.

The means μ are the model's own parameters. Variance families hold only the variances, as
log σ² so that every value an optimiser can reach is a valid variance. `GaussianPosterior`
is what every method shares (VL, MAP, sampling VI, Laplace): the prior, the KL, optimiser
groups and prediction at the mean or averaged over weight samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gradreg.curvature.fisher import trainable_parameters
from gradreg.families import family_problem

PREDICT_MODES = ("mean", "sample")  # every Gaussian posterior's; methods may add their own
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


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block (BatchNorm at its running statistics, no dropout),
    its own mode back afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def check_positive(name: str, value: float | None) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


def gaussian_kl(
    variances: Sequence[Tensor], means: Sequence[Tensor], prior_variance: float
) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, s² I)) = Σ_λ [(σ² + μ²)/(2s²) − ½ − ½ log(σ²/s²)].

    ``variances`` may hold 0-d tensors (one σ² shared by a whole parameter tensor).
    """
    s2 = prior_variance
    total = means[0].new_zeros(())
    for var, mu in zip(variances, means, strict=True):
        n = mu.numel()
        var_term = var / (2 * s2) - 0.5 - 0.5 * torch.log(var / s2)
        var_sum = var_term * n if var.dim() == 0 else var_term.sum()
        total = total + var_sum + mu.square().sum() / (2 * s2)
    return total


class DiagonalVariance(nn.Module):
    """One σ² per weight, held as one flat log σ² vector over all parameters.

    Learned by default; ``learn=False`` keeps it fixed (the post-hoc Laplace posterior).
    """

    log_variance: Tensor  # a Parameter when learned, else a buffer

    def __init__(self, params: Sequence[Tensor], init_variance: float, learn: bool = True) -> None:
        super().__init__()
        init_variance = check_positive("init_variance", init_variance)
        self._shapes = [p.shape for p in params]
        total = sum(p.numel() for p in params)
        log_variance = torch.full(
            (total,), math.log(init_variance), dtype=params[0].dtype, device=params[0].device
        )
        if learn:
            self.log_variance = nn.Parameter(log_variance)
        else:
            self.register_buffer("log_variance", log_variance)
        self.learnable = learn

    def variances(self) -> list[Tensor]:
        pieces = self.log_variance.exp().split([math.prod(s) for s in self._shapes])
        return [piece.view(shape) for piece, shape in zip(pieces, self._shapes, strict=True)]

    def regulariser_terms(self, fisher: Tensor, prior_variance: float) -> tuple[Tensor, Tensor]:
        """(Σ_λ σ_λ² F_λ, Σ_λ [σ²/(2s²) − ½ − ½ log(σ²/s²)]) for a flat Fisher vector.

        Both share one exp of log σ²: on small models these elementwise passes over every
        weight are a visible part of a step.
        """
        log_var = self.log_variance
        var = log_var.exp()
        n, log_s2 = log_var.numel(), math.log(prior_variance)
        kl_part = 0.5 * (var.sum() / prior_variance - n - log_var.sum() + n * log_s2)
        return torch.dot(var, fisher), kl_part


class UniformVariance(nn.Module):
    """σ² = noise_scale² for every weight; fixed by default, optionally learned."""

    log_variance: Tensor  # a Parameter when learned, else a buffer

    def __init__(self, params: Sequence[Tensor], noise_scale: float, learn: bool = False) -> None:
        super().__init__()
        noise_scale = check_positive("noise_scale", noise_scale)
        log_variance = torch.tensor(
            2 * math.log(noise_scale), dtype=params[0].dtype, device=params[0].device
        )
        if learn:
            self.log_variance = nn.Parameter(log_variance)
        else:
            self.register_buffer("log_variance", log_variance)
        self.learnable = learn
        self._n_tensors = len(params)
        self._n_weights = sum(p.numel() for p in params)

    @property
    def noise_scale(self) -> float:
        return float((0.5 * self.log_variance.detach()).exp())

    def variances(self) -> list[Tensor]:
        """One 0-d tensor per parameter tensor (broadcasts against it)."""
        var = self.log_variance.exp()
        return [var] * self._n_tensors

    def regulariser_terms(self, fisher: Tensor, prior_variance: float) -> tuple[Tensor, Tensor]:
        """(σ² Σ_λ F_λ, n · [σ²/(2s²) − ½ − ½ log(σ²/s²)]) for a flat Fisher vector."""
        shifted = self.log_variance - math.log(prior_variance)
        kl_part = self._n_weights * 0.5 * (shifted.exp() - 1.0 - shifted)
        return self.log_variance.exp() * fisher.sum(), kl_part


class PointMass(nn.Module):
    """σ = 0: the posterior is μ itself (MAP). Its KL is infinite, so only the μ-part counts."""

    learnable = False

    def __init__(self, params: Sequence[Tensor]) -> None:
        super().__init__()
        self._zeros = [torch.zeros((), dtype=p.dtype, device=p.device) for p in params]

    def variances(self) -> list[Tensor]:
        return list(self._zeros)


class HessianVariance(nn.Module):
    """σ² = 1/(λ(h + δ)) per weight from a Hessian estimate h, held as one flat buffer: IVON's
    posterior (`gradreg.posteriors.ivon`), whose own update moves h (no gradient does).

    λ (``ess``) and δ (``weight_decay``) are numbers fixed when it is made; h starts at
    ``hess_init``. λ(h + δ) stays positive under IVON's update (see there).
    """

    learnable = False
    hess: Tensor

    def __init__(
        self, params: Sequence[Tensor], *, hess_init: float, ess: float, weight_decay: float
    ) -> None:
        super().__init__()
        self.ess = check_positive("ess", ess)
        self.weight_decay = check_positive("weight_decay", weight_decay)
        hess_init = check_positive("hess_init", hess_init)
        self._sizes = [p.numel() for p in params]
        self._shapes = [p.shape for p in params]
        hess = torch.full(
            (sum(self._sizes),), hess_init, dtype=params[0].dtype, device=params[0].device
        )
        self.register_buffer("hess", hess)

    def precision(self) -> Tensor:
        """λ(h + δ), flat: the posterior's precision per weight."""
        return self.ess * (self.hess + self.weight_decay)

    def stds(self) -> Tensor:
        """σ = 1/sqrt(λ(h + δ)), flat."""
        return self.precision().rsqrt()

    def split(self, flat: Tensor) -> list[Tensor]:
        """A flat vector over all weights as views shaped like each parameter."""
        pieces = flat.split(self._sizes)
        return [piece.view(shape) for piece, shape in zip(pieces, self._shapes, strict=True)]

    def variances(self) -> list[Tensor]:
        return self.split(self.precision().reciprocal())


VarianceFamily = DiagonalVariance | UniformVariance | PointMass | HessianVariance


def make_variance_family(
    params: Sequence[Tensor],
    variance: str,
    *,
    prior_variance: float,
    noise_scale: float | None = None,
    init_variance: float | None = None,
    learn_noise_scale: bool = False,
) -> DiagonalVariance | UniformVariance:
    """The named family, with the settings that belong to it and nothing else."""
    problem = family_problem(
        variance,
        noise_scale=noise_scale,
        init_variance=init_variance,
        learn_noise_scale=learn_noise_scale,
    )
    if problem:
        raise ValueError(problem)
    if variance == "diagonal":
        if init_variance is None:
            init_variance = DEFAULT_INIT_VARIANCE_FACTOR * prior_variance
        return DiagonalVariance(params, init_variance)
    assert noise_scale is not None  # family_problem: the uniform family needs one
    return UniformVariance(params, noise_scale, learn=learn_noise_scale)


class GaussianPosterior(nn.Module):
    """q(w) = N(μ, diag σ²) over ``model``'s trainable weights with prior N(0, s² I).

    Subclasses define ``loss(x, y, generator=...)``, the per-datapoint training objective.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        n_data: int,
        prior_variance: float = 1.0,
        kl_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.n_data = check_count("n_data", n_data)
        self.prior_variance = check_positive("prior_variance", prior_variance)
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, int | float):
            raise TypeError(f"kl_weight must be a number, got {kl_weight!r}")
        if not math.isfinite(kl_weight) or kl_weight < 0:
            raise ValueError(f"kl_weight must be finite and >= 0, got {kl_weight!r}")
        self.kl_weight = float(kl_weight)
        self._names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.family: VarianceFamily = PointMass(trainable_parameters(model))

    def _use_family(
        self,
        variance: str,
        *,
        noise_scale: float | None,
        init_variance: float | None,
        learn_noise_scale: bool,
    ) -> None:
        """Hold σ² in the named family (`make_variance_family`): the trained posteriors'."""
        self.variance = variance
        self.family = make_variance_family(
            trainable_parameters(self.model),
            variance,
            prior_variance=self.prior_variance,
            noise_scale=noise_scale,
            init_variance=init_variance,
            learn_noise_scale=learn_noise_scale,
        )

    # ---------------------------------------------------------------- posterior
    def kl(self, means: Sequence[Tensor] | None = None) -> Tensor:
        """KL(q‖p) in full (not divided by N); for σ = 0 only its μ-part, Σμ²/(2s²)."""
        means = trainable_parameters(self.model) if means is None else means
        if isinstance(self.family, PointMass):
            return weight_decay(means, self.prior_variance)
        return gaussian_kl(self.family.variances(), means, self.prior_variance)

    def variances(self) -> list[Tensor]:
        """σ² for every trainable parameter, shaped like it."""
        params = trainable_parameters(self.model)
        return [
            v.detach().expand_as(p).clone()
            for v, p in zip(self.family.variances(), params, strict=True)
        ]

    @property
    def noise_scale(self) -> float | None:
        """σ of every weight for ``variance='uniform'``; None for the other families."""
        if isinstance(self.family, UniformVariance):
            return self.family.noise_scale
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

    def param_groups(self, lr: float, variance_lr: float | None = None) -> list[dict[str, Any]]:
        """Optimiser groups: the means at ``lr``, learned variances at ``variance_lr``.

        ``variance_lr`` defaults to 10 × ``lr``: variances converge slowly (Unlu & Aitchison).
        """
        lr = check_positive("lr", lr)
        groups = [{"params": trainable_parameters(self.model), "lr": lr, "name": "means"}]
        if self.family.learnable:
            variance_lr = (
                DEFAULT_VARIANCE_LR_FACTOR * lr
                if variance_lr is None
                else check_positive("variance_lr", variance_lr)
            )
            params = list(self.family.parameters())
            groups.append({"params": params, "lr": variance_lr, "name": "variances"})
        elif variance_lr is not None:
            raise ValueError("variance_lr was given but this posterior learns no variances")
        return groups

    def loss(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> LossTerms:
        """The per-datapoint training objective on one minibatch."""
        raise NotImplementedError

    # ---------------------------------------------------------------- training
    def make_optimiser(self, lr: float, variance_lr: float | None = None) -> torch.optim.Optimizer:
        """What trains this posterior: Adam over `param_groups`. A method with an update rule
        of its own (IVON) returns its own optimiser, and `train_step` drives it."""
        return torch.optim.Adam(self.param_groups(lr, variance_lr))

    def train_step(
        self,
        x: Tensor,
        y: Tensor,
        optimiser: torch.optim.Optimizer,
        *,
        generator: torch.Generator | None = None,
        forward: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> dict[str, float]:
        """One step on the batch (x, y): `loss` (computed inside ``forward()``, e.g. bf16
        autocast), its backward and ``optimiser``'s step. Returns the loss terms as floats; a
        loss that is not finite raises FloatingPointError before any parameter moves."""
        with forward():
            terms = self.loss(x, y, generator=generator)
        values = terms.as_floats()
        if not math.isfinite(values["train_loss"]):
            raise FloatingPointError(f"train_loss={values['train_loss']}")
        optimiser.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimiser.step()
        return values

    def after_training(
        self,
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor],
        *,
        predict: str,
        n_samples: int,
        generator: torch.Generator | None = None,
    ) -> dict[str, float]:
        """A method's post-hoc step after its last epoch (Laplace's curvature and prior);
        returns what it chose, as numbers for the report. None for a trained posterior."""
        return {}

    # ---------------------------------------------------------------- prediction
    @torch.no_grad()
    def predictive_log_probs(
        self,
        x: Tensor,
        mode: str = "mean",
        n_samples: int = 32,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """log p(y|x) in float64: at μ (``mean``) or averaged over weights drawn from q.

        With σ = 0 (MAP) both modes are the network at μ.
        """
        if mode not in PREDICT_MODES:
            raise ValueError(f"unknown predict mode {mode!r}; accepted: {', '.join(PREDICT_MODES)}")
        check_count("n_samples", n_samples)
        with evaluating(self.model):
            if mode == "mean" or isinstance(self.family, PointMass):
                return torch.log_softmax(self.model(x).double(), dim=-1)
            draws = []
            for _ in range(n_samples):
                logits = functional_call(self.model, self.sample_weights(generator), (x,))
                draws.append(torch.log_softmax(logits.double(), dim=-1))
            return torch.logsumexp(torch.stack(draws), dim=0) - math.log(n_samples)

    def sample_weights(
        self, generator: torch.Generator | None = None, skip: frozenset[int] = frozenset()
    ) -> dict[str, Tensor]:
        """One draw w = μ + σ ε per trainable parameter, by name (differentiable).

        Parameters whose ``id`` is in ``skip`` are left out (they keep their mean).
        """
        means = trainable_parameters(self.model)
        return {
            name: mu
            + var.sqrt()
            * torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            for name, mu, var in zip(self._names, means, self.family.variances(), strict=True)
            if id(mu) not in skip
        }

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


def weight_decay(means: Sequence[Tensor], prior_variance: float) -> Tensor:
    """Σ_λ μ_λ²/(2s²): the μ-part of the KL to the prior N(0, s² I)."""
    first, *rest = means
    return sum((mu.square().sum() for mu in rest), first.square().sum()) / (2 * prior_variance)
