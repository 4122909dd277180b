"""The method table: every user-facing method, what it trains and which settings it reads.

One entry per name a user writes (``vl-uniform``, ``map``, …), in `gradreg compare`, a sweep
spec or `gradreg.posterior(model, name, ...)`. `TrainConfig`, the sweep spec's method list,
the sweep checks and the comparison all read this table, so adding a method is one entry
here plus the class that implements it.

This module imports no torch: the API and the sweep spec read it cheaply. Posterior classes
are named by import path and loaded only when a posterior is built.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gradreg.families import FAMILIES, VarianceFamily

# Settings every method reads, with the project-wide hyperparameter names.
COMMON_SETTINGS: tuple[str, ...] = (
    "prior_variance",
    "kl_weight",
    "lr",
    "epochs",
    "batch_size",
    "predict",
    "n_samples",
    "seed",
    "device",
    "bf16",
    "compile",
    "tf32",
)
# The settings a posterior class takes as keyword arguments (the rest drive the training loop).
POSTERIOR_ARGUMENTS: tuple[str, ...] = (
    "prior_variance",
    "kl_weight",
    "noise_scale",
    "learn_noise_scale",
    "init_variance",
    "fisher",
    "empirical_fisher",
    "mc_samples",
    "prior_fit",
    "regulariser_grad",
    "ess",
    "hess_init",
    "beta1",
    "beta2",
)
# Adam's step size: every method's default lr, but where its table defaults give one of its
# own (IVON's step is SGD-like, preconditioned by its Hessian estimate: it needs ~100× more).
DEFAULT_LR = 1e-3
# Names a user may bring from elsewhere for what the table names otherwise, with the pointer
# their refusal gives.
OTHER_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "weight_decay": "the prior sets it: give prior_variance s² (weight decay δ = "
        "kl_weight/(N s²) for every method; IVON's δ = 1/(ess·s²))",
    }
)
# How a post-hoc Laplace chooses its prior precision after training
# (see gradreg.posteriors.laplace).
PRIOR_FITS: tuple[str, ...] = ("val_nll", "marglik", "fixed")
LAPLACE_PREDICTIVES: tuple[str, ...] = ("glm_probit", "glm_mc", "sample", "mean")
# How VL computes its regulariser's μ-gradient (see gradreg.curvature.finite_difference).
REGULARISER_GRADS: tuple[str, ...] = ("auto", "autograd", "finite_difference")
# Where `auto` takes finite differences: on CUDA they are faster and leaner than the double
# backward (BENCHMARKS.md, "GPU step cost"); on the CPU autograd is as fast or faster. Their
# passes run in true float32 even where torch allows TF32 (its default on NVIDIA): TF32's
# rounding drowns the difference, and puts autograd's gradient 2-9% off (BENCHMARKS.md, "VL's
# regulariser gradient under TF32"). Under bf16 autocast `auto` keeps autograd: a forward
# difference there is much noisier (BENCHMARKS.md, "Finite-difference accuracy").
FINITE_DIFFERENCE_DEVICES: tuple[str, ...] = ("cuda",)


def regulariser_grad_problem(regulariser_grad: str, fisher: str | None) -> str | None:
    """Why this gradient path does not fit this Fisher estimator, or None when it does."""
    if regulariser_grad not in REGULARISER_GRADS:
        return (
            f"unknown regulariser_grad {regulariser_grad!r}; accepted: "
            f"{', '.join(REGULARISER_GRADS)}"
        )
    if regulariser_grad == "finite_difference" and fisher not in (None, "sampled"):
        # per_example's gradient is Σ_i H_i(σ² ⊙ g_i), a different vector per example: one
        # perturbed pass per example. exact enumerates classes the same way.
        return (
            f"regulariser_grad='finite_difference' needs fisher='sampled', not fisher={fisher!r}: "
            "its regulariser's gradient takes one Hessian-vector product per example (or "
            "class), which a single perturbed pass cannot give; use regulariser_grad='autograd'"
        )
    return None


def ivon_problem(
    *,
    ess: float | None = None,
    kl_weight: float = 1.0,
    hess_init: float | None = None,
    beta1: float | None = None,
    beta2: float | None = None,
) -> str | None:
    """Why these IVON settings do not fit together, or None when they do.

    IVON's effective sample size λ is ``ess``, or N/kl_weight when it is not given (the
    training-set size at the default kl_weight = 1): both name λ, so ``ess`` with a kl_weight
    other than 1 is refused, as is kl_weight = 0 without ``ess`` (λ infinite, σ = 0).
    """
    for name, value in (("ess", ess), ("hess_init", hess_init)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{name} must be a positive number, got {value!r}"
        if not math.isfinite(value) or value <= 0:
            return f"{name} must be a positive finite number, got {value!r}"
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{name} must be a number in [0, 1), got {value!r}"
        if not 0 <= value < 1:
            return f"{name} must be in [0, 1), got {value!r}"
    if ess is not None and kl_weight != 1:
        return (
            f"ess={ess!r} and kl_weight={kl_weight!r} both set IVON's effective sample size "
            "λ (ess, or N/kl_weight when ess is not given); give one of them"
        )
    if ess is None and kl_weight == 0:
        return (
            "kl_weight=0 makes IVON's effective sample size N/kl_weight infinite (σ = 0); give "
            "kl_weight > 0, or ess"
        )
    return None


def compile_problem(method: Method) -> str | None:
    """Why ``compile=True`` (torch.compile of the model) does not fit, or None when it does."""
    if method.compile_obstacle:
        return f"compile=true does not fit method {method.name!r}: {method.compile_obstacle}"
    return None


def resolve_regulariser_grad(
    regulariser_grad: str, fisher: str, device_type: str, low_precision: bool = False
) -> str:
    """``autograd`` or ``finite_difference``: the path ``regulariser_grad`` takes on
    ``device_type``; ``low_precision``: the finite difference's passes would run below
    float32 (under autocast; they turn TF32 off, see gradreg.curvature.finite_difference)."""
    if regulariser_grad != "auto":
        return regulariser_grad
    if fisher == "sampled" and device_type in FINITE_DIFFERENCE_DEVICES and not low_precision:
        return "finite_difference"
    return "autograd"


@dataclass(frozen=True)
class Method:
    """One user-facing method.

    ``trainer`` is the name `TrainConfig.method` uses for the training objective; methods that
    share one (VL's two variance families) differ by ``variance``.
    """

    name: str
    summary: str
    trainer: str
    posterior_class: str  # "module:Class", loaded by `posterior_class_of`
    variance: str | None = None  # the variance family it fixes, if it has one
    own_settings: tuple[str, ...] = ()  # beyond the common ones and the family's
    defaults: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig defaults
    preset: Mapping[str, Any] = field(default_factory=dict)  # `gradreg compare` defaults
    grid: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # compare --search
    # compare --search-budget: log-uniform ranges (variance_lr as a multiple of lr)
    space: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    uses_fisher: bool = False
    # The predictives it can be judged by; the first is its own, the default everywhere.
    predictives: tuple[str, ...] = ("sample", "mean")
    trainer_default: bool = True  # the entry TrainConfig picks when no variance is given
    compare_by_default: bool = True
    # Why `compile=True` does not fit the method, or "" when it does (see `compile_problem`).
    compile_obstacle: str = ""

    @property
    def default_lr(self) -> float:
        """The lr a run of this method takes unless one is given."""
        return float(self.defaults.get("lr", DEFAULT_LR))

    @property
    def predictive(self) -> str:
        """Its own posterior predictive: what its val_/test_ metrics are computed with."""
        return self.predictives[0]

    @property
    def family(self) -> VarianceFamily | None:
        return FAMILIES[self.variance] if self.variance else None

    @property
    def learn_switch(self) -> str | None:
        """The true/false setting that turns learning σ² on (the uniform family's
        ``learn_noise_scale``, whichever trainer holds it), or None where σ² is always or
        never learned."""
        learned = self.family.learned if self.family else False
        return learned if isinstance(learned, str) else None

    def learns_variance(self, values: Mapping[str, Any]) -> bool:
        """Whether a run with these settings learns σ² (and so reads ``variance_lr``)."""
        learned = self.family.learned if self.family else False
        return bool(values.get(learned, False)) if isinstance(learned, str) else learned

    @property
    def required(self) -> Mapping[str, str]:
        """Settings the method cannot train without, with a hint of a value."""
        return self.family.required if self.family else {}

    def settings(self, learns_noise_scale: bool = False) -> tuple[str, ...]:
        """Every setting the method reads; ``learns_noise_scale``: its `learn_switch` is on.
        A uniform σ² has a learning rate only when learned."""
        own = list(self.family.settings) if self.family else []
        if self.family is not None:
            learned = self.family.learned
            if learned is True or (isinstance(learned, str) and learns_noise_scale):
                own.append("variance_lr")
        own += self.own_settings
        return COMMON_SETTINGS + tuple(own)

    def search_settings(
        self, fixed: Mapping[str, Any], searched: Collection[str]
    ) -> tuple[str, ...]:
        """Every setting the method may read in a search that fixes ``fixed`` and searches
        the settings named in ``searched``: σ² may be learned where its `learn_switch` is
        fixed on or searched."""
        switch = self.learn_switch
        return self.settings(self.learns_variance(fixed) or switch in searched)

    def train_settings(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """TrainConfig keyword arguments for this method: its identity plus the ``values``
        it reads (others are dropped: a searched setting another method uses)."""
        used = self.settings(self.learns_variance(values))
        identity: dict[str, Any] = {"method": self.trainer}
        if self.variance is not None:
            identity["variance"] = self.variance
        return {**identity, **{k: v for k, v in values.items() if k in used}}


_FISHER_SETTINGS = ("fisher", "empirical_fisher")
_VL_SETTINGS = (*_FISHER_SETTINGS, "regulariser_grad")
# Tried on torch 2.13 (CPU): the per-layer estimators failed ("torch.compile with aot_autograd
# does not currently support double backward"); the finite-difference pass re-hooks every ReLU
# each step, so dynamo recompiled until its limit and ran the model eagerly, or lost the
# recorded kinks. Refused rather than run as something it is not.
_VL_COMPILE = (
    "VL differentiates through its backward (autograd) or hooks every ReLU and max-pool for "
    "its perturbed pass (finite_difference), and torch.compile runs neither compiled; "
    "train it without compile"
)
# With N ≪ weights a full KL pulls learned variances to the prior: tempering (kl_weight) and
# how fast the variances move (variance_lr, a multiple of lr) are the levers for learned σ.
_LEARNED_SPACE = {
    "prior_variance": (0.01, 100.0),
    "kl_weight": (0.01, 1.0),
    "variance_lr": (1.0, 30.0),
}
_LEARNED_GRID = {"prior_variance": (0.1, 1.0), "kl_weight": (0.1, 1.0), "variance_lr": (1.0, 10.0)}
_VL_DIAGONAL = Method(
    "vl-diagonal",
    "Variational Laplace, one learned σ² per weight",
    trainer="vl",
    posterior_class="gradreg.posteriors.variational_laplace:VariationalLaplace",
    variance="diagonal",
    own_settings=_VL_SETTINGS,
    defaults={"fisher": "sampled", "regulariser_grad": "auto"},
    compile_obstacle=_VL_COMPILE,
    space=_LEARNED_SPACE,
    grid=_LEARNED_GRID,
    uses_fisher=True,
)
_MCVI = Method(
    "mcvi",
    "sampling VI: the ELBO by reparameterised weight samples, learned diagonal σ²",
    trainer="mcvi",
    posterior_class="gradreg.posteriors.baselines:SamplingVI",
    variance="diagonal",
    own_settings=("mc_samples",),
    defaults={"mc_samples": 1},
    space=_LEARNED_SPACE,
    grid=_LEARNED_GRID,
)

# IVON (Shen et al., ICML 2024): the defaults are the ivon-opt package's (lr its README's).
# Its λ = ess (N/kl_weight by default) and δ = 1/(λ s²): prior_variance and kl_weight mean what
# they mean for MC-VI, so its space searches them as _LEARNED_SPACE does, and its own step
# size in variance_lr's place (an SGD-like lr: ~0.1, not Adam's 1e-3).
_IVON = Method(
    "ivon",
    "IVON: variational online Newton, σ² = 1/(ess·(h + δ)) from its Hessian estimate h, "
    "at Adam's cost",
    trainer="ivon",
    posterior_class="gradreg.posteriors.ivon:IVON",
    own_settings=("ess", "hess_init", "beta1", "beta2", "mc_samples"),
    defaults={"lr": 0.1, "hess_init": 1.0, "beta1": 0.9, "beta2": 0.99999, "mc_samples": 1},
    space={"prior_variance": (0.01, 100.0), "kl_weight": (0.01, 1.0), "lr": (0.03, 1.0)},
    grid={"prior_variance": (0.1, 1.0), "kl_weight": (0.1, 1.0), "lr": (0.1, 0.3)},
)


def _uniform(method: Method, name: str, summary: str, **changes: Any) -> Method:
    """``method`` with the uniform family: σ = noise_scale, searched like a hyperparameter."""
    return dataclasses.replace(
        method,
        name=name,
        summary=summary,
        variance="uniform",
        preset={"noise_scale": 0.01},
        space={"prior_variance": (0.01, 100.0), "noise_scale": (1e-3, 0.3)},
        grid={"prior_variance": (0.1, 1.0), "noise_scale": (0.003, 0.01, 0.03)},
        trainer_default=False,
        **changes,
    )


METHODS: Mapping[str, Method] = MappingProxyType(
    {
        m.name: m
        for m in (
            _uniform(
                _VL_DIAGONAL, "vl-uniform", "Variational Laplace, σ = noise_scale for every weight"
            ),
            _VL_DIAGONAL,
            Method(
                "map",
                "maximum a posteriori: σ = 0, NLL + weight decay",
                trainer="map",
                posterior_class="gradreg.posteriors.baselines:MAP",
                space={"prior_variance": (0.01, 100.0)},
                grid={"prior_variance": (0.1, 1.0)},
                predictives=("mean", "sample"),  # σ = 0: both are the network at μ
            ),
            _MCVI,
            Method(
                "laplace",
                "post-hoc Laplace: MAP training, then σ² = 1/(F + δ), δ chosen after training",
                trainer="laplace",
                posterior_class="gradreg.posteriors.laplace:Laplace",
                own_settings=(*_FISHER_SETTINGS, "prior_fit"),
                defaults={"fisher": "exact", "prior_fit": "val_nll"},
                # The prior precision is chosen after training; the training prior is MAP's.
                space={"prior_variance": (0.01, 100.0)},
                grid={"prior_variance": (0.1, 1.0)},
                uses_fisher=True,
                predictives=LAPLACE_PREDICTIVES,
                compile_obstacle=(
                    "its post-hoc curvature and GLM predictive hook into every layer of the "
                    "trained network; train it without compile"
                ),
            ),
            _uniform(
                _MCVI,
                "mcvi-uniform",
                "sampling VI with VL-uniform's posterior: σ = noise_scale for every weight",
                compare_by_default=False,
            ),
            _IVON,  # last: the entries before keep their compare search points (SEARCH_SEED)
        )
    }
)
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
PREDICT_MODES: tuple[str, ...] = tuple(
    dict.fromkeys(mode for m in METHODS.values() for mode in m.predictives)
)
TRAINERS: tuple[str, ...] = tuple(dict.fromkeys(m.trainer for m in METHODS.values()))
# Every setting some method reads, beyond `method` itself.
HYPERPARAMETERS: tuple[str, ...] = tuple(
    dict.fromkeys(s for m in METHODS.values() for s in m.settings(learns_noise_scale=True))
)


def get_method(name: str) -> Method:
    """The entry called ``name``; an unknown name is a ValueError that lists the known ones."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; accepted: {', '.join(METHODS)}") from None


def settings_used(method: str, learns_noise_scale: bool = False) -> tuple[str, ...]:
    """The settings ``method`` reads (see `Method.settings`)."""
    return get_method(method).settings(learns_noise_scale)


def train_settings(method: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The TrainConfig keyword arguments for ``method`` with ``values`` (those it reads)."""
    return get_method(method).train_settings(values)


def method_for(trainer: str, variance: str | None = None) -> Method:
    """The entry a `TrainConfig` (``method=trainer``, ``variance``) trains."""
    entries = [m for m in METHODS.values() if m.trainer == trainer]
    if not entries:
        raise ValueError(f"unknown method {trainer!r}; accepted: {', '.join(TRAINERS)}")
    if variance is None:
        return next(m for m in entries if m.trainer_default)
    for entry in entries:
        if entry.variance == variance:
            return entry
    families = [f for f in FAMILIES if any(m.variance == f for m in entries)]
    if not families:
        raise ValueError(f"method {trainer!r} does not use variance")
    raise ValueError(f"unknown variance {variance!r}; accepted: {', '.join(families)}")


def posterior_class_of(method: Method) -> type:
    """The class that implements ``method`` (imports torch)."""
    module, _, name = method.posterior_class.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not isinstance(cls, type):
        raise TypeError(f"{method.posterior_class} is not a class")
    return cls


def posterior(model: Any, method: str, *, n_data: int, **settings: Any) -> Any:
    """The posterior of ``method`` over ``model``'s weights: the front door to every method.

    ``gradreg.posterior(model, "vl-uniform", n_data=1000, noise_scale=0.01)``. ``settings``
    are the method's posterior settings (``prior_variance``, ``noise_scale``, ``fisher``, …);
    one it does not take is a ValueError naming it and the ones it does.
    """
    entry = get_method(method)
    accepted = [s for s in entry.settings(learns_noise_scale=True) if s in POSTERIOR_ARGUMENTS]
    stray = sorted(set(settings) - set(accepted))
    if stray:
        loop = [s for s in stray if s not in POSTERIOR_ARGUMENTS and s in HYPERPARAMETERS]
        hint = f" ({', '.join(loop)}: training-loop settings, see TrainConfig)" if loop else ""
        hint += "".join(f" ({s}: {OTHER_NAMES[s]})" for s in stray if s in OTHER_NAMES)
        raise ValueError(
            f"method {method!r} does not take {', '.join(stray)}{hint}; it takes: "
            f"{', '.join(accepted)}"
        )
    arguments = {**{k: v for k, v in entry.defaults.items() if k in accepted}, **settings}
    if entry.variance is not None:
        arguments["variance"] = entry.variance
    return posterior_class_of(entry)(model, n_data=n_data, **arguments)
