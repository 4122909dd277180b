"""gradreg: Variational Laplace (the Taylor-expanded ELBO) for Bayesian neural networks.

The names below load on first use, so that the torch-free modules (`gradreg.methods`,
`gradreg.names`) stay cheap to import for the sweep spec and the API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ESTIMATORS": "gradreg.curvature.fisher",
    "MAP": "gradreg.posteriors.baselines",
    "METHODS": "gradreg.methods",
    "GaussianPosterior": "gradreg.posteriors.gaussian",
    "Laplace": "gradreg.posteriors.laplace",
    "LossTerms": "gradreg.posteriors.gaussian",
    "SamplingVI": "gradreg.posteriors.baselines",
    "TrainConfig": "gradreg.config",
    "VariationalLaplace": "gradreg.posteriors.variational_laplace",
    "fisher_diagonal": "gradreg.curvature.fisher",
    "fit": "gradreg.train",
    "metrics": None,  # the module gradreg.evaluation.metrics
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
    from gradreg.config import TrainConfig
    from gradreg.curvature.fisher import ESTIMATORS, fisher_diagonal
    from gradreg.evaluation import metrics
    from gradreg.methods import METHODS, posterior
    from gradreg.posteriors.baselines import MAP, SamplingVI
    from gradreg.posteriors.gaussian import GaussianPosterior, LossTerms
    from gradreg.posteriors.laplace import Laplace
    from gradreg.posteriors.variational_laplace import VariationalLaplace
    from gradreg.train import fit


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gradreg' has no attribute {name!r}")
    module = _EXPORTS[name]
    value = (
        importlib.import_module("gradreg.evaluation.metrics")
        if module is None
        else getattr(importlib.import_module(module), name)
    )
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
