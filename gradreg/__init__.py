"""gradreg: Variational Laplace (the Taylor-expanded ELBO) for Bayesian neural networks.

The names below load on first use, so that the torch-free modules (`gradreg.methods`,
`gradreg.names`) stay cheap to import for the sweep spec and the API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ESTIMATORS": "gradreg.fisher",
    "MAP": "gradreg.baselines",
    "METHODS": "gradreg.methods",
    "GaussianPosterior": "gradreg.gaussian",
    "Laplace": "gradreg.laplace",
    "LossTerms": "gradreg.gaussian",
    "SamplingVI": "gradreg.baselines",
    "TrainConfig": "gradreg.config",
    "VariationalLaplace": "gradreg.objective",
    "fisher_diagonal": "gradreg.fisher",
    "fit": "gradreg.train",
    "metrics": None,  # the module itself
    "posterior": "gradreg.methods",
}
__all__ = [
    "ESTIMATORS",
    "MAP",
    "METHODS",
    "GaussianPosterior",
    "Laplace",
    "LossTerms",
    "SamplingVI",
    "TrainConfig",
    "VariationalLaplace",
    "fisher_diagonal",
    "fit",
    "metrics",
    "posterior",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from gradreg import metrics
    from gradreg.baselines import MAP, SamplingVI
    from gradreg.config import TrainConfig
    from gradreg.fisher import ESTIMATORS, fisher_diagonal
    from gradreg.gaussian import GaussianPosterior, LossTerms
    from gradreg.laplace import Laplace
    from gradreg.methods import METHODS, posterior
    from gradreg.objective import VariationalLaplace
    from gradreg.train import fit


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gradreg' has no attribute {name!r}")
    module = _EXPORTS[name]
    value = (
        importlib.import_module(f"gradreg.{name}")
        if module is None
        else getattr(importlib.import_module(module), name)
    )
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
