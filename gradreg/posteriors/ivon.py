"""IVON, the improved variational online Newton method (Shen et al., ICML 2024, "Variational
Learning is Effective for Large Deep Networks", arXiv 2402.17641, Algorithm 1), written here
from the paper.

The posterior is q(θ) = N(m, diag σ²) with σ² = 1/(λ(h + δ)): the means m are the model's own
parameters and h is a Hessian estimate per weight (`HessianVariance`). One step on a minibatch,
with ℓ̄ its mean NLL and S = ``mc_samples``::

    θ_s = m + σ ε_s, ε_s ~ N(0, I)                         S draws
    ĝ = mean_s ∇ℓ̄(θ_s),  ĥ = mean_s ∇ℓ̄(θ_s) · ε_s/σ       the reparameterisation estimates
    g ← β1 g + (1 − β1) ĝ                                  momentum
    h ← β2 h + (1 − β2) ĥ + ½(1 − β2)² (h − ĥ)²/(h + δ)    the correction keeps h + δ > 0
    ḡ = g/(1 − β1^t)                                       debiased
    m ← m − α (ḡ + δm)/(h + δ)

One forward and one backward pass per draw, as one MAP step: IVON costs about what Adam does.
α = lr·(h₀ + δ), the paper's learning-rate rescaling (``rescale_lr``), so that the first steps
are those of SGD with momentum and step lr; the update (ḡ + δm)/(h + δ) is clipped elementwise
to [−ξ, ξ] with ξ = ``clip_radius`` (the paper's clipping; infinite, so none, by default).

The prior, as for every method: IVON's objective is E_q[ℓ̄(θ)] + KL(q ‖ p)/λ with p = N(0, s²I)
and s² = ``prior_variance``, whose μ-gradient δm gives the weight decay δ = 1/(λ s²). λ =
``ess`` (effective sample size), by default N/kl_weight (the training-set size at the default
kl_weight = 1): the objective is then MC-VI's, (1/B)Σ NLL + (kl_weight/N) KL(q ‖ p), and δ is
MAP's weight-decay coefficient kl_weight/(N s²). The ivon-opt package's ``weight_decay`` δ with
its ``ess`` λ is prior_variance = 1/(λδ) here (δ = 1e-4 with λ = 50 000 is s² = 0.2).

The ivon-opt package (GPLv3+) is a test-only oracle (tests/gradreg/test_external_oracles.py):
with the same seed and batches the two give the same weights, Hessian estimate and samples in
float64. Its noise is one flat N(0, I) vector over all weights in parameter order; the draws
here are made the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from gradreg.curvature.fisher import check_labels, trainable_parameters
from gradreg.curvature.layer_rules import at_least_fp32
from gradreg.methods import METHODS, ivon_problem
from gradreg.posteriors.gaussian import GaussianPosterior, HessianVariance, LossTerms, check_count

__all__ = ["IVON", "IVONOptimiser"]

_DEFAULTS = METHODS["ivon"].defaults  # the method table is the defaults' one home


class IVONOptimiser(torch.optim.Optimizer):
    """Algorithm 1's update of the means m, the momentum g and the Hessian estimate h from one
    step's estimates ĝ and ĥ (`update`); `IVON.train_step` draws the weights and computes them.

    Its state is the momentum and the step count t of each mean; h belongs to the posterior
    (it is σ), which this optimiser updates in place. ``step()`` is not how it is driven: an
    IVON step needs ĥ, which a gradient alone does not give.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        *,
        posterior: IVON,
        beta1: float,
        beta2: float,
        clip_radius: float,
        rescale_lr: bool,
    ) -> None:
        defaults = {
            "beta1": beta1,
            "beta2": beta2,
            "clip_radius": clip_radius,
            "rescale_lr": rescale_lr,
        }
        super().__init__(params, defaults)
        self.posterior = posterior

    @torch.no_grad()
    def update(self, grad: Tensor, hess_estimate: Tensor) -> None:
        """One step from ĝ and ĥ, flat vectors over the posterior's weights in parameter
        order (the order of its optimiser groups)."""
        delta, offset = self.posterior.weight_decay, 0
        for group in self.param_groups:
            params: list[Tensor] = group["params"]
            size = sum(p.numel() for p in params)
            h, h_hat, g_hat = (
                flat[offset : offset + size]
                for flat in (self.posterior.family.hess, hess_estimate, grad)
            )
            offset += size
            beta1, beta2, radius = group["beta1"], group["beta2"], group["clip_radius"]
            alpha = group["lr"]
            if group["rescale_lr"]:
                alpha *= self.posterior.hess_init + delta
            states = [self.state[p] for p in params]
            for p, state in zip(params, states, strict=True):
                if not state:
                    state["step"] = 0
                    state["momentum"] = torch.zeros_like(p)
                state["step"] += 1
            momenta = [state["momentum"] for state in states]
            torch._foreach_lerp_(momenta, _shaped(g_hat, params), 1 - beta1)
            # h ← β2 h + (1 − β2) ĥ + ½(1 − β2)² (h − ĥ)²/(h + δ), from the h before the step
            correction = (h - h_hat).square_().div_(h + delta)
            h.lerp_(h_hat, 1 - beta2).add_(correction, alpha=0.5 * (1 - beta2) ** 2)
            step = states[0]["step"]  # the group's parameters step together
            direction = torch._foreach_div(momenta, 1 - beta1**step)
            torch._foreach_add_(direction, params, alpha=delta)
            torch._foreach_div_(direction, _shaped(h + delta, params))
            if math.isfinite(radius):
                torch._foreach_clamp_min_(direction, -radius)
                torch._foreach_clamp_max_(direction, radius)
            torch._foreach_add_(params, direction, alpha=-alpha)

    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        raise TypeError(
            "IVONOptimiser takes its step from IVON.train_step (the weights it draws give ĝ "
            "and ĥ); call that, or update(grad, hess_estimate)"
        )


def _shaped(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
    """A flat vector as views shaped like ``params``, in their order."""
    pieces = flat.split([p.numel() for p in params])
    return [piece.view_as(p) for piece, p in zip(pieces, params, strict=True)]


class IVON(GaussianPosterior):
    """q(θ) = N(m, diag σ²), σ² = 1/(λ(h + δ)), trained by IVON's update (see the module).

    ``ess`` is λ (None: n_data/kl_weight); δ = 1/(λ·prior_variance) is `weight_decay`;
    ``hess_init`` is h₀; ``beta1`` and ``beta2`` the momenta of the gradient and of h;
    ``mc_samples`` the weight draws per step. ``clip_radius`` and ``rescale_lr`` are the
    paper's clipping (none) and learning-rate rescaling (on), as the ivon-opt package's
    defaults have them.
    """

    family: HessianVariance

    def __init__(
        self,
        model: nn.Module,
        *,
        n_data: int,
        prior_variance: float = 1.0,
        kl_weight: float = 1.0,
        ess: float | None = None,
        hess_init: float = _DEFAULTS["hess_init"],
        beta1: float = _DEFAULTS["beta1"],
        beta2: float = _DEFAULTS["beta2"],
        mc_samples: int = _DEFAULTS["mc_samples"],
        clip_radius: float = math.inf,
        rescale_lr: bool = True,
    ) -> None:
        super().__init__(model, n_data=n_data, prior_variance=prior_variance, kl_weight=kl_weight)
        problem = ivon_problem(
            ess=ess, kl_weight=self.kl_weight, hess_init=hess_init, beta1=beta1, beta2=beta2
        )
        if problem:
            raise ValueError(problem)
        self.mc_samples = check_count("mc_samples", mc_samples)
        if isinstance(clip_radius, bool) or not isinstance(clip_radius, int | float):
            raise TypeError(f"clip_radius must be a positive number, got {clip_radius!r}")
        if not clip_radius > 0:  # inf: no clipping
            raise ValueError(f"clip_radius must be > 0 (inf: no clipping), got {clip_radius!r}")
        self.clip_radius = float(clip_radius)
        self.rescale_lr = bool(rescale_lr)
        self.hess_init = float(hess_init)
        self.beta1, self.beta2 = float(beta1), float(beta2)
        lam = float(ess) if ess is not None else self.n_data / self.kl_weight
        self.family = HessianVariance(
            trainable_parameters(model),
            hess_init=self.hess_init,
            ess=lam,
            weight_decay=1.0 / (lam * self.prior_variance),
        )

    @property
    def ess(self) -> float:
        """λ, the effective sample size: σ² = 1/(λ(h + δ))."""
        return self.family.ess

    @property
    def weight_decay(self) -> float:
        """δ = 1/(λ s²), the prior's precision per example (the package's weight_decay)."""
        return self.family.weight_decay

    # ---------------------------------------------------------------- sampling
    def sample_weights(
        self, generator: torch.Generator | None = None, skip: frozenset[int] = frozenset()
    ) -> dict[str, Tensor]:
        """One draw θ = m + σ ε per trainable parameter, by name (differentiable in m). ε is
        one flat N(0, I) vector over all weights in parameter order, as IVON's training draws
        it (and the ivon-opt package). Parameters whose ``id`` is in ``skip`` are left out."""
        means = trainable_parameters(self.model)
        flat = torch.cat([mu.reshape(-1) for mu in means])
        theta = flat + self.family.stds() * self._noise(flat, generator)
        return {
            name: value
            for name, value, mu in zip(self._names, self.family.split(theta), means, strict=True)
            if id(mu) not in skip
        }

    @staticmethod
    def _noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

    # ---------------------------------------------------------------- training
    def loss(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> LossTerms:
        """IVON's objective per datapoint, E_q[ℓ̄(θ)] + KL(q ‖ p)/λ, with one draw of θ. Its
        m-gradient is ĝ + δm, the direction IVON's step preconditions; `train_step` is how
        IVON trains."""
        with torch.enable_grad():
            logits = functional_call(self.model, self.sample_weights(generator), (x,))
            check_labels(y, logits, "y")
            nll = F.cross_entropy(at_least_fp32(logits), y)
            kl = self.kl() / self.ess
            total = nll + kl
        zero = nll.new_zeros(())
        return LossTerms(total, nll.detach(), zero, kl.detach(), logits.detach())

    def make_optimiser(self, lr: float, variance_lr: float | None = None) -> IVONOptimiser:
        """IVON's own update over the means at step size ``lr`` (σ follows h: no
        ``variance_lr``)."""
        return IVONOptimiser(
            self.param_groups(lr, variance_lr),
            posterior=self,
            beta1=self.beta1,
            beta2=self.beta2,
            clip_radius=self.clip_radius,
            rescale_lr=self.rescale_lr,
        )

    def train_step(
        self,
        x: Tensor,
        y: Tensor,
        optimiser: torch.optim.Optimizer,
        *,
        generator: torch.Generator | None = None,
        forward: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> dict[str, float]:
        """One IVON step on (x, y): ``mc_samples`` draws θ = m + σε, one forward (inside
        ``forward()``) and backward pass each, then ``optimiser.update(ĝ, ĥ)``. Returns the loss
        terms as floats (``train_nll`` averaged over the draws, ``train_kl`` = KL/λ before the
        step); a loss that is not finite raises FloatingPointError before anything moves."""
        if not isinstance(optimiser, IVONOptimiser) or optimiser.posterior is not self:
            raise TypeError(
                "IVON trains with its own optimiser: pass the one its make_optimiser returned"
            )
        with torch.no_grad():
            mean = torch.cat([mu.reshape(-1) for mu in trainable_parameters(self.model)])
            precision = self.family.precision()
            std = precision.rsqrt()
            kl = self._kl(mean, precision) / self.ess
        grad: Tensor | None = None
        hess = nll_total = mean.new_zeros(())
        for _ in range(self.mc_samples):
            noise = self._noise(mean, generator)
            theta = torch.addcmul(mean, std, noise).requires_grad_()
            with torch.enable_grad():
                with forward():
                    logits = functional_call(self.model, self._named(theta), (x,))
                check_labels(y, logits, "y")
                nll = F.cross_entropy(at_least_fp32(logits), y)
                (sample_grad,) = torch.autograd.grad(nll, theta)
            sample_hess = sample_grad.mul(noise).div_(std)  # ĝ_s ε_s/σ
            if grad is None:
                grad, hess = sample_grad, sample_hess
            else:
                grad.add_(sample_grad)
                hess.add_(sample_hess)
            nll_total = nll_total + nll.detach()
        nll_mean, kl_value = torch.stack([nll_total / self.mc_samples, kl]).tolist()
        values = {
            "train_loss": nll_mean + kl_value,
            "train_nll": nll_mean,
            "train_sqgrad": 0.0,
            "train_kl": kl_value,
        }
        if not math.isfinite(values["train_loss"]):
            raise FloatingPointError(f"train_loss={values['train_loss']}")
        assert grad is not None  # mc_samples >= 1
        if self.mc_samples > 1:
            grad.div_(self.mc_samples)
            hess.div_(self.mc_samples)
        optimiser.update(grad, hess)
        return values

    def _kl(self, mean: Tensor, precision: Tensor) -> Tensor:
        """KL(q ‖ p) from flat means and precisions 1/σ²: `gaussian_kl` in one pass over the
        weights, not one per parameter (on a small network those passes are a visible part
        of a step)."""
        s2, n = self.prior_variance, mean.numel()
        variance_sum, log_precision_sum = precision.reciprocal().sum(), precision.log().sum()
        quadratic = (variance_sum + mean.dot(mean)) / (2 * s2)
        return quadratic - 0.5 * n + 0.5 * log_precision_sum + 0.5 * n * math.log(s2)

    def _named(self, flat: Tensor) -> dict[str, Tensor]:
        return dict(zip(self._names, self.family.split(flat), strict=True))
