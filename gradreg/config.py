"""TrainConfig: everything one training run needs, validated when it is made.

Making one never imports user code: a model or dataset given as an entry point
``"package.module:function"`` is checked for its syntax only (`gradreg.user_code`), and its
options for being JSON values; the builder or loader judges its options when it is called.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from gradreg.curvature.fisher import ESTIMATORS
from gradreg.curvature.precision import TF32_SETTINGS
from gradreg.data import DEFAULT_VAL_FRACTION, available_datasets
from gradreg.families import family_problem
from gradreg.methods import (
    COMMON_SETTINGS,
    DEFAULT_LR,
    HYPERPARAMETERS,
    METHODS,
    OTHER_NAMES,
    POSTERIOR_ARGUMENTS,
    PRIOR_FITS,
    TRAINERS,
    Method,
    compile_problem,
    ivon_problem,
    method_for,
    regulariser_grad_problem,
)
from gradreg.models import available_models
from gradreg.user_code import is_entry_point, name_problem

# The fields only some methods read; the method table says which.
METHOD_FIELDS = tuple(sorted({*HYPERPARAMETERS, "variance"} - set(COMMON_SETTINGS)))


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Hyperparameter names follow the project-wide conventions."""

    dataset: str = "digits"  # a dataset's name, or a loader "package.module:function"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    split_seed: int = 0
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float | None = None  # None: the dataset's default (its official split)
    model: str = "mlp"  # a built-in model's name, or a builder "package.module:function"
    model_options: dict[str, Any] = field(default_factory=dict)
    method: str = "vl"
    variance: str | None = None
    noise_scale: float | None = None
    learn_noise_scale: bool = False
    init_variance: float | None = None
    prior_variance: float = 1.0
    kl_weight: float = 1.0
    fisher: str | None = None
    empirical_fisher: bool = False
    mc_samples: int | None = None
    prior_fit: str | None = None
    regulariser_grad: str | None = None  # VL: autograd, finite_difference or auto (the default)
    # IVON (gradreg.posteriors.ivon): effective sample size (None: N/kl_weight), Hessian
    # initialisation, momentum of the gradient and of the Hessian estimate.
    ess: float | None = None
    hess_init: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    lr: float | None = None  # None: the method's (DEFAULT_LR, or its table default: IVON's)
    variance_lr: float | None = None
    epochs: int = 20
    batch_size: int = 128
    predict: str | None = None  # None: the method's own predictive (METHODS[...].predictive)
    n_samples: int = 32
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    compile: bool = False  # torch.compile the model (see gradreg.methods.compile_problem)
    # float32 convolutions and matrix products in TF32 on NVIDIA GPUs: as torch's flags are
    # ("default": convolutions only), "on" or "off", for the run only (gradreg.curvature.precision)
    tf32: str = "default"

    def __post_init__(self) -> None:
        _named_or_entry_point("dataset", self.dataset, tuple(available_datasets()))
        _named_or_entry_point("model", self.model, tuple(available_models()))
        _choice("method", self.method, TRAINERS)
        entry = self._resolve_method_settings()
        if self.fisher is not None:
            _choice("fisher", self.fisher, ESTIMATORS)
        if self.mc_samples is not None:
            _integer("mc_samples", self.mc_samples, minimum=1)
        if self.predict is None:
            object.__setattr__(self, "predict", entry.predictive)
        elif self.predict not in entry.predictives:
            raise ValueError(
                f"method {entry.name!r} has no predictive {self.predict!r}; accepted: "
                f"{', '.join(entry.predictives)}"
            )
        if self.prior_fit is not None:
            _choice("prior_fit", self.prior_fit, PRIOR_FITS)
        _choice("tf32", self.tf32, TF32_SETTINGS)
        if self.regulariser_grad is not None:
            problem = regulariser_grad_problem(self.regulariser_grad, self.fisher)
            if problem:
                raise ValueError(problem)
        for name in ("dataset_options", "model_options"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f"{name} must be a mapping, got {getattr(self, name)!r}")
        for name in ("dataset", "model"):
            if is_entry_point(getattr(self, name)):
                _json_options(f"{name}_options", getattr(self, f"{name}_options"))
        for name in ("epochs", "batch_size", "n_samples"):
            _integer(name, getattr(self, name), minimum=1)
        for name in ("seed", "split_seed"):
            _integer(name, getattr(self, name), minimum=0)
        for name in ("lr", "prior_variance"):
            _positive(name, getattr(self, name))
        for name in ("variance_lr", "noise_scale", "init_variance"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        for name in ("learn_noise_scale", "empirical_fisher", "bf16", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be true or false, got {getattr(self, name)!r}")
        _number("kl_weight", self.kl_weight)
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if entry.variance is not None:
            problem = family_problem(
                entry.variance,
                noise_scale=self.noise_scale,
                init_variance=self.init_variance,
                learn_noise_scale=self.learn_noise_scale,
            )
            if problem:
                raise ValueError(problem)
        if self.compile:
            problem = compile_problem(entry)
            if problem:
                raise ValueError(problem)
        if self.method == "ivon":
            problem = ivon_problem(
                ess=self.ess,
                kl_weight=self.kl_weight,
                hess_init=self.hess_init,
                beta1=self.beta1,
                beta2=self.beta2,
            )
            if problem:
                raise ValueError(problem)
        if not isinstance(self.device, str):
            raise TypeError(
                f"device must be a string such as 'auto', 'cpu' or 'cuda', got {self.device!r}"
            )

    def _resolve_method_settings(self) -> Method:
        """Give method-specific settings their defaults; refuse those the method ignores."""
        entries = [m for m in METHODS.values() if m.trainer == self.method]
        used = {s for m in entries for s in m.settings(learns_noise_scale=True)}
        if any(m.variance for m in entries):
            used.add("variance")
        given = [
            name
            for name in METHOD_FIELDS
            if name not in used and getattr(self, name) not in (None, False)
        ]
        if given:
            own = [name for name in METHOD_FIELDS if name in used]
            raise ValueError(
                f"method {self.method!r} does not use {', '.join(given)}; remove "
                f"{'it' if len(given) == 1 else 'them'} (settings it uses: "
                f"{', '.join(own) or 'none beyond the common ones'})"
            )
        entry = method_for(self.method, self.variance)
        defaults = {"variance": entry.variance, "lr": DEFAULT_LR, **entry.defaults}
        for name, default in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        return entry

    @property
    def entry_points(self) -> tuple[str, ...]:
        """The user's code this config runs: its model and dataset where they are entry
        points, model first."""
        return tuple(value for value in (self.model, self.dataset) if is_entry_point(value))

    @property
    def predict_mode(self) -> str:
        """``predict`` as filled in when the config was made: the method's own predictive
        unless one was given."""
        assert self.predict is not None  # __post_init__ fills it in
        return self.predict

    @property
    def learning_rate(self) -> float:
        """``lr`` as filled in when the config was made: the method's default unless one was
        given."""
        assert self.lr is not None  # __post_init__ fills it in
        return self.lr

    @property
    def method_name(self) -> str:
        """The method table's name for what this config trains (``vl-uniform``, ``map``, …)."""
        return method_for(self.method, self.variance).name

    def posterior_settings(self) -> dict[str, Any]:
        """The keyword arguments of `gradreg.posterior` for this config's method."""
        entry = METHODS[self.method_name]
        reads = entry.settings(learns_noise_scale=True)
        return {
            name: getattr(self, name)
            for name in POSTERIOR_ARGUMENTS
            if name in reads and getattr(self, name) is not None
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain mapping; an unknown key is an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            accepted = ", ".join(sorted(known))
            hints = "".join(
                f" ({name}: {OTHER_NAMES[name]})" for name in unknown if name in OTHER_NAMES
            )
            raise ValueError(
                f"unknown training setting(s) {', '.join(unknown)}{hints}; accepted: {accepted}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _choice(name: str, value: Any, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")


def _named_or_entry_point(name: str, value: Any, accepted: tuple[str, ...]) -> None:
    """A built-in name, or the syntax of an entry point (nothing imported)."""
    problem = name_problem(name, value, accepted)
    if problem:
        raise ValueError(problem)


def _json_options(name: str, options: dict[str, Any]) -> None:
    """A user's builder or loader options: keyword names, and values JSON holds (numbers,
    strings, true/false, null, lists and mappings of them), since they travel in specs, the
    saved model's manifest and MLflow."""
    for key, value in options.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"{name}: {key!r} is not a keyword argument name")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{name}: {key}={value!r} is not a JSON value ({error}); options are numbers, "
                "strings, true/false, null, and lists and mappings of them"
            ) from None


def _integer(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _positive(name: str, value: Any) -> None:
    if _number(name, value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
