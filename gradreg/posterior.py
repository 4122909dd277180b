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
    """One learned σ² per weight."""

    learnable = True

    def __init__(self, params: Sequence[Tensor], init_variance: float) -> None:
        super().__init__()
        init_variance = check_positive("init_variance", init_variance)
        self.log_variance = nn.ParameterList(
            nn.Parameter(torch.full_like(p, math.log(init_variance), requires_grad=True))
            for p in params
        )

    def variances(self) -> list[Tensor]:
        return [lv.exp() for lv in self.log_variance]


class UniformVariance(nn.Module):
    """σ² = noise_scale² for every weight; fixed by default, optionally learned."""

    def __init__(self, params: Sequence[Tensor], noise_scale: float, learn: bool = False) -> None:
        super().__init__()
        noise_scale = check_positive("noise_scale", noise_scale)
        log_variance = torch.tensor(2 * math.log(noise_scale), dtype=params[0].dtype)
        if learn:
            self.log_variance = nn.Parameter(log_variance)
        else:
            self.register_buffer("log_variance", log_variance)
        self.learnable = learn
        self._n = len(params)

    @property
    def noise_scale(self) -> float:
        return float((0.5 * self.log_variance.detach()).exp())

    def variances(self) -> list[Tensor]:
        """One 0-d tensor per parameter tensor (broadcasts against it)."""
        var = self.log_variance.exp()
        return [var] * self._n
