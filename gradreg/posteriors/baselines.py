"""Baselines on the same posterior, prior and training loop as Variational Laplace.

* `MAP` — σ = 0: NLL + weight decay (kl_weight/N)·Σμ²/(2s²).
* `SamplingVI` — the ELBO estimated with K reparameterised weight samples per step
  (local reparameterisation for Linear layers), exact Gaussian KL, learned variances.

Post-hoc Laplace (MAP training, then curvature) is in `gradreg.posteriors.laplace`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from gradreg.curvature.fisher import check_labels, trainable_parameters
from gradreg.curvature.layer_rules import at_least_fp32
from gradreg.methods import method_for
from gradreg.posteriors.gaussian import (
    DiagonalVariance,
    GaussianPosterior,
    LossTerms,
    UniformVariance,
    check_count,
    weight_decay,
)

# The method table is the defaults' one home (its two MC-VI entries share them).
_MCVI_DEFAULTS = method_for("mcvi").defaults
# Keeps sqrt differentiable where a pre-activation's variance is exactly zero.
_VARIANCE_FLOOR = 1e-16


def _nll(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(at_least_fp32(logits), y)


class MAP(GaussianPosterior):
    """A point estimate: the posterior mean with σ = 0 and the same prior as VL."""

    def loss(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> LossTerms:
        with torch.enable_grad():
            logits = self.model(x)
            check_labels(y, logits, "y")
            nll = _nll(logits, y)
            params = trainable_parameters(self.model)
            kl = (self.kl_weight / self.n_data) * weight_decay(params, self.prior_variance)
            total = nll + kl
        zero = nll.new_zeros(())
        return LossTerms(total, nll.detach(), zero, kl.detach(), logits.detach())


class SamplingVI(GaussianPosterior):
    """Mean-field VI: −ELBO/N estimated with ``mc_samples`` weight samples per step."""

    family: DiagonalVariance | UniformVariance

    def __init__(
        self,
        model: nn.Module,
        *,
        n_data: int,
        prior_variance: float = 1.0,
        variance: str = "diagonal",
        noise_scale: float | None = None,
        init_variance: float | None = None,
        learn_noise_scale: bool = False,
        kl_weight: float = 1.0,
        mc_samples: int = _MCVI_DEFAULTS["mc_samples"],
        local_reparameterisation: bool = True,
    ) -> None:
        super().__init__(model, n_data=n_data, prior_variance=prior_variance, kl_weight=kl_weight)
        self._use_family(
            variance,
            noise_scale=noise_scale,
            init_variance=init_variance,
            learn_noise_scale=learn_noise_scale,
        )
        self.mc_samples = check_count("mc_samples", mc_samples)
        self.local_reparameterisation = bool(local_reparameterisation)

    def loss(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> LossTerms:
        """``nll`` is the Monte-Carlo estimate of E_q[−log p(y|x,w)] averaged over the batch."""
        with torch.enable_grad():
            logits = self.sampled_logits(x, generator)
            check_labels(y, logits, "y")
            nll = _nll(logits, y)
            for _ in range(self.mc_samples - 1):
                logits = self.sampled_logits(x, generator)
                nll = nll + _nll(logits, y)
            nll = nll / self.mc_samples
            kl = (self.kl_weight / self.n_data) * self.kl()
            total = nll + kl
        zero = nll.new_zeros(())
        return LossTerms(total, nll.detach(), zero, kl.detach(), logits.detach())

    def sampled_logits(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The network under one posterior draw, differentiable in μ and σ².

        Linear layers whose weight and bias are both trainable sample their pre-activations
        (local reparameterisation: N(μ_W a + μ_b, σ²_W a² + σ²_b), independent per example);
        every other parameter is sampled as a weight.
        """
        params = trainable_parameters(self.model)
        variances = dict(zip(map(id, params), self.family.variances(), strict=True))
        local = self._local_layers(variances) if self.local_reparameterisation else {}
        local_ids = frozenset(id(p) for m in local for p in m.parameters(recurse=False))
        weights = self.sample_weights(generator, skip=local_ids)

        def add_noise(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            assert isinstance(module, nn.Linear)  # hooked on the local layers only
            weight_var, bias_var = local[module]
            a = inputs[0]
            var = F.linear(
                a.square(),
                weight_var.expand_as(module.weight),
                None if bias_var is None else bias_var.expand_as(module.bias),
            )
            noise = torch.randn(
                output.shape, generator=generator, device=output.device, dtype=output.dtype
            )
            return output + (var + _VARIANCE_FLOOR).sqrt() * noise

        handles = [m.register_forward_hook(add_noise) for m in local]
        try:
            logits: Tensor = functional_call(self.model, weights, (x,))
            return logits
        finally:
            for handle in handles:
                handle.remove()

    def _local_layers(
        self, variances: dict[int, Tensor]
    ) -> dict[nn.Module, tuple[Tensor, Tensor | None]]:
        """The Linear layers whose weight and bias (if any) are all trainable: their σ²."""
        layers: dict[nn.Module, tuple[Tensor, Tensor | None]] = {}
        for module in self.model.modules():
            if not isinstance(module, nn.Linear) or id(module.weight) not in variances:
                continue
            if module.bias is not None and id(module.bias) not in variances:
                continue
            bias_var = None if module.bias is None else variances[id(module.bias)]
            layers[module] = (variances[id(module.weight)], bias_var)
        return layers
