"""TrainConfig: everything one training run needs, validated when it is made."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from gradreg.data import available_datasets
from gradreg.fisher import ESTIMATORS
from gradreg.models import available_models
from gradreg.posterior import PREDICT_MODES, VARIANCE_FAMILIES

METHODS = ("vl", "map", "mcvi", "laplace")
# Settings that only some methods use, with the default each of those methods gets.
METHOD_SETTINGS: dict[str, dict[str, object]] = {
    "vl": {"variance": "diagonal", "fisher": "sampled"},
    "map": {},
    "mcvi": {"variance": "diagonal", "mc_samples": 1},
    "laplace": {"fisher": "exact"},
}
VARIANCE_SETTINGS = ("noise_scale", "learn_noise_scale", "init_variance", "variance_lr")
FISHER_SETTINGS = ("empirical_fisher",)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Hyperparameter names follow the project-wide conventions."""

    dataset: str = "digits"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    split_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float | None = None  # None: the dataset's default (its official split)
    model: str = "mlp"
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
    lr: float = 1e-3
    variance_lr: float | None = None
    epochs: int = 20
    batch_size: int = 128
    predict: str = "mean"
    n_samples: int = 32
    seed: int = 0
    device: str = "auto"
    bf16: bool = False

    def __post_init__(self) -> None:
        _choice("dataset", self.dataset, tuple(available_datasets()))
        _choice("model", self.model, tuple(available_models()))
        _choice("method", self.method, METHODS)
        self._resolve_method_settings()
        if self.variance is not None:
            _choice("variance", self.variance, VARIANCE_FAMILIES)
        if self.fisher is not None:
            _choice("fisher", self.fisher, ESTIMATORS)
        if self.mc_samples is not None:
            _integer("mc_samples", self.mc_samples, minimum=1)
        _choice("predict", self.predict, PREDICT_MODES)
        for name in ("dataset_options", "model_options"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f"{name} must be a mapping, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "n_samples"):
            _integer(name, getattr(self, name), minimum=1)
        for name in ("seed", "split_seed"):
            _integer(name, getattr(self, name), minimum=0)
        for name in ("lr", "prior_variance"):
            _positive(name, getattr(self, name))
        for name in ("variance_lr", "noise_scale", "init_variance"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        for name in ("learn_noise_scale", "empirical_fisher", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be true or false, got {getattr(self, name)!r}")
        _number("kl_weight", self.kl_weight)
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.variance == "uniform" and self.noise_scale is None:
            raise ValueError("variance='uniform' needs noise_scale (σ of every weight), e.g. 0.01")
        if self.variance == "uniform" and self.init_variance is not None:
            raise ValueError(
                "init_variance belongs to variance='diagonal'; uniform uses noise_scale"
            )
        if self.variance == "diagonal" and (self.noise_scale is not None or self.learn_noise_scale):
            raise ValueError(
                "noise_scale and learn_noise_scale belong to variance='uniform'; "
                "the diagonal posterior starts from init_variance"
            )
        if not isinstance(self.device, str):
            raise TypeError(
                f"device must be a string such as 'auto', 'cpu' or 'cuda', got {self.device!r}"
            )

    def _resolve_method_settings(self) -> None:
        """Give method-specific settings their defaults; refuse those the method ignores."""
        own = METHOD_SETTINGS[self.method]
        unused = [name for name in ("variance", "fisher", "mc_samples") if name not in own]
        if "variance" not in own:
            unused += VARIANCE_SETTINGS
        if "fisher" not in own:
            unused += FISHER_SETTINGS
        given = [name for name in unused if getattr(self, name) not in (None, False)]
        if given:
            raise ValueError(
                f"method {self.method!r} does not use {', '.join(given)}; remove "
                f"{'it' if len(given) == 1 else 'them'} (settings it uses: "
                f"{', '.join(own) or 'none beyond the common ones'})"
            )
        for name, default in own.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain mapping; an unknown key is an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            accepted = ", ".join(sorted(known))
            raise ValueError(
                f"unknown training setting(s) {', '.join(unknown)}; accepted: {accepted}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _choice(name: str, value: Any, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")


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
