"""Post-hoc Laplace, as its community runs it: MAP training, then a diagonal Laplace whose
prior precision is chosen after training, predicting with the linearised (GLM) predictive.

After the last epoch, `Laplace.after_training`:
1. sums the diagonal Fisher F over the training set at the trained network (eval mode); with
   the default ``fisher="exact"`` that is the generalised Gauss-Newton diagonal;
2. chooses the prior precision δ (``prior_fit``): ``val_nll`` by the validation NLL of the
   posterior's own predictive over a grid, ``marglik`` by the diagonal Laplace's marginal
   likelihood, or ``fixed``, the training prior 1/s² (an ablation);
3. sets σ² = 1/(F + δ).

Before that the posterior is the MAP network: every predictive is its mean. laplace-torch is
the reference (Daxberger et al. 2021); its diag-GGN posterior variance matches this one.
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import brentq
from torch import Tensor, nn

from gradreg.curvature.fisher import check_estimator, fisher_diagonal, trainable_parameters
from gradreg.methods import LAPLACE_PREDICTIVES, METHODS, PRIOR_FITS
from gradreg.posteriors.baselines import MAP
from gradreg.posteriors.gaussian import DiagonalVariance, evaluating
from gradreg.posteriors.glm import logit_variances, mc_log_probs, probit_log_probs

_DEFAULTS = METHODS["laplace"].defaults  # the method table is the defaults' one home
LAPLACE_BATCH = 256
# Candidate prior precisions for prior_fit="val_nll": laplace-torch's grid (1e-4 … 1e4)
# and two decades more, where the posterior is all but the MAP network.
PRIOR_PRECISION_GRID = tuple(10.0**k for k in torch.linspace(-4, 6, 41).tolist())
_PRECISION_RANGE = (1e-8, 1e8)


class Laplace(MAP):
    """MAP training; after the last epoch a diagonal Laplace posterior (see the module)."""

    family: DiagonalVariance  # fixed: σ² = 1/(F + δ) once fitted
    # buffers, so that a checkpoint taken at any epoch loads
    fitted: Tensor
    prior_precision: Tensor
    fisher_total: Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        n_data: int,
        prior_variance: float = 1.0,
        kl_weight: float = 1.0,
        fisher: str = _DEFAULTS["fisher"],
        empirical_fisher: bool = False,
        prior_fit: str = _DEFAULTS["prior_fit"],
    ) -> None:
        super().__init__(model, n_data=n_data, prior_variance=prior_variance, kl_weight=kl_weight)
        self.fisher = check_estimator(fisher)
        self.empirical_fisher = bool(empirical_fisher)
        if prior_fit not in PRIOR_FITS:
            raise ValueError(f"unknown prior_fit {prior_fit!r}; accepted: {', '.join(PRIOR_FITS)}")
        self.prior_fit = prior_fit
        params = trainable_parameters(model)
        dtype, device = params[0].dtype, params[0].device
        # The buffers exist from the start so that a checkpoint taken at any epoch loads.
        self.family = DiagonalVariance(params, self.prior_variance, learn=False)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool, device=device))
        precision = torch.tensor(1.0 / self.prior_variance, dtype=dtype, device=device)
        self.register_buffer("prior_precision", precision)
        n_weights = sum(p.numel() for p in params)
        self.register_buffer("fisher_total", torch.zeros(n_weights, dtype=dtype, device=device))

    # ---------------------------------------------------------------- the post-hoc fit

    def fit_curvature(
        self, x: Tensor, y: Tensor, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """Sum the diagonal Fisher over (x, y), the whole training set; set σ² = 1/(F + δ)
        with the current prior precision δ. Returns F per parameter."""
        if len(x) != self.n_data:
            raise ValueError(
                f"the Laplace Fisher must sum over the whole training set: got {len(x)} "
                f"examples, the posterior was built for n_data={self.n_data}"
            )
        params = trainable_parameters(self.model)
        totals = [torch.zeros_like(p) for p in params]
        # curvature at the trained network, BatchNorm at running statistics
        with evaluating(self.model):
            for xb, yb in zip(x.split(LAPLACE_BATCH), y.split(LAPLACE_BATCH), strict=True):
                batch = fisher_diagonal(
                    self.model,
                    xb,
                    estimator=self.fisher,
                    labels=yb if self.empirical_fisher else None,
                    generator=generator,
                )
                totals = [t + f for t, f in zip(totals, batch, strict=True)]
        with torch.no_grad():
            self.fisher_total.copy_(torch.cat([t.reshape(-1) for t in totals]))
            self.set_prior_precision(float(self.prior_precision))
        return totals

    def set_prior_precision(self, precision: float) -> None:
        """σ² = 1/(F + δ) for prior precision δ; the posterior counts as fitted from now."""
        if not math.isfinite(precision) or precision <= 0:
            raise ValueError(f"prior precision must be a positive finite number, got {precision}")
        with torch.no_grad():
            self.prior_precision.fill_(precision)
            flat = self.fisher_total.to(self.family.log_variance.dtype)
            self.family.log_variance.copy_(-torch.log(flat + precision))
            self.fitted.fill_(True)

    def log_marginal_likelihood(self, x: Tensor, y: Tensor, precision: float) -> float:
        """log p(D) of the diagonal Laplace at the MAP weights θ with prior N(0, δ⁻¹ I):
        Σ_i log p(y_i|x_i, θ) − δ‖θ‖²/2 + (P/2) log δ − ½ Σ_λ log(F_λ + δ)."""
        log_lik = self._log_likelihood(x, y)
        return log_lik + self._log_evidence_terms(precision)

    def _log_evidence_terms(self, precision: float) -> float:
        theta2 = sum(float(p.detach().double().square().sum()) for p in self._params())
        fisher = self.fisher_total.double()
        n = fisher.numel()
        log_det = float(torch.log(fisher + precision).sum())
        return -0.5 * precision * theta2 + 0.5 * n * math.log(precision) - 0.5 * log_det

    def marglik_precision(self) -> float:
        """The δ that maximises the marginal likelihood: the root of its derivative in δ,
        Σ_λ F_λ/(F_λ + δ) − δ‖θ‖² (decreasing, so the maximum is unique)."""
        theta2 = sum(float(p.detach().double().square().sum()) for p in self._params())
        fisher = self.fisher_total.double()

        def slope(log_precision: float) -> float:
            precision = math.exp(log_precision)
            return float((fisher / (fisher + precision)).sum()) - precision * theta2

        low, high = (math.log(b) for b in _PRECISION_RANGE)
        if slope(low) <= 0 or slope(high) >= 0:
            edge = _PRECISION_RANGE[0] if slope(low) <= 0 else _PRECISION_RANGE[1]
            raise ValueError(
                f"the marginal likelihood has no maximum inside δ ∈ {_PRECISION_RANGE}: it "
                f"keeps rising towards δ = {edge:g} (‖θ‖² = {theta2:.3g}); use prior_fit='val_nll'"
            )
        return math.exp(brentq(slope, low, high, xtol=1e-10))

    def val_nll_precision(
        self,
        x_val: Tensor,
        y_val: Tensor,
        predict: str = "glm_probit",
        n_samples: int = 32,
        generator: torch.Generator | None = None,
    ) -> tuple[float, dict[float, float]]:
        """The grid δ whose ``predict`` predictive has the lowest validation NLL, and the NLL
        at every δ. Sampled predictives reuse one seed for every δ."""
        scores: dict[float, float] = {}
        if predict == "glm_probit":
            variances = torch.stack(
                [1.0 / (self.fisher_total.double() + d) for d in PRIOR_PRECISION_GRID], dim=1
            )
            with evaluating(self.model):
                f_mu, v = logit_variances(self.model, x_val, variances)
            log_probs = probit_log_probs(f_mu, v)
            for precision, lp in zip(PRIOR_PRECISION_GRID, log_probs, strict=True):
                scores[precision] = _nll(lp, y_val)
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
            for precision in PRIOR_PRECISION_GRID:
                self.set_prior_precision(precision)
                common = torch.Generator(device=x_val.device).manual_seed(seed)
                lp = self.predictive_log_probs(x_val, predict, n_samples, common)
                scores[precision] = _nll(lp, y_val)
        best = min(scores, key=scores.__getitem__)
        return best, scores

    def after_training(
        self,
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor],
        *,
        predict: str,
        n_samples: int,
        generator: torch.Generator | None = None,
    ) -> dict[str, float]:
        """The post-hoc fit (see the module); returns what it chose."""
        self.fit_curvature(*train, generator)
        if self.prior_fit == "marglik":
            precision = self.marglik_precision()
        elif self.prior_fit == "val_nll":
            predictive = "glm_probit" if predict == "mean" else predict
            precision, _ = self.val_nll_precision(*val, predictive, n_samples, generator)
        else:
            precision = 1.0 / self.prior_variance
        self.set_prior_precision(precision)
        return {"prior_precision": precision}

    # ---------------------------------------------------------------- prediction

    @torch.no_grad()
    def predictive_log_probs(
        self,
        x: Tensor,
        mode: str = "mean",
        n_samples: int = 32,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``glm_probit`` and ``glm_mc`` (the linearised model), ``sample`` (the network with
        sampled weights) or ``mean``; before the post-hoc fit, every mode is the MAP network."""
        if not bool(self.fitted) or mode == "mean":
            return super().predictive_log_probs(x, "mean", n_samples, generator)
        if mode == "sample":
            return self._sampled(x, n_samples, generator)
        if mode == "glm_probit":
            with torch.enable_grad(), evaluating(self.model):
                f_mu, v = logit_variances(self.model, x, self.variances())
            return probit_log_probs(f_mu, v)
        if mode == "glm_mc":
            with evaluating(self.model):
                return mc_log_probs(self.model, x, self.variances(), n_samples, generator)
        raise ValueError(
            f"unknown Laplace predictive {mode!r}; accepted: {', '.join(LAPLACE_PREDICTIVES)}"
        )

    def _sampled(self, x: Tensor, n_samples: int, generator: torch.Generator | None) -> Tensor:
        return super().predictive_log_probs(x, "sample", n_samples, generator)

    # ---------------------------------------------------------------- helpers

    def _params(self) -> list[nn.Parameter]:
        return trainable_parameters(self.model)

    @torch.no_grad()
    def _log_likelihood(self, x: Tensor, y: Tensor) -> float:
        total = 0.0
        with evaluating(self.model):
            log_probs = [torch.log_softmax(self.model(xb).double(), -1) for xb in x.split(1024)]
        for lp, yb in zip(log_probs, y.split(1024), strict=True):
            total += float(lp.gather(1, yb[:, None]).sum())
        return total


def _nll(log_probs: Tensor, labels: Tensor) -> float:
    return float(-log_probs.gather(1, labels[:, None].to(log_probs.device)).mean())
