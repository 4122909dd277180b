"""Variance families of the factorised Gaussian posterior q(w) = N(μ, diag σ²).

The means μ are the model's own parameters; these modules hold only the variances, as
log σ² so that every value an optimiser can reach is a valid variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

VARIANCE_FAMILIES = ("diagonal", "uniform")


def check_positive(name: str, value: float | None) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


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
    """One learned σ² per weight, held as one flat log σ² vector over all parameters."""

    learnable = True

    def __init__(self, params: Sequence[Tensor], init_variance: float) -> None:
        super().__init__()
        init_variance = check_positive("init_variance", init_variance)
        self._shapes = [p.shape for p in params]
        total = sum(p.numel() for p in params)
        self.log_variance = nn.Parameter(
            torch.full(
                (total,), math.log(init_variance), dtype=params[0].dtype, device=params[0].device
            )
        )

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
