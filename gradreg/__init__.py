"""gradreg: Variational Laplace (the Taylor-expanded ELBO) for Bayesian neural networks.

The names below load on first use, so that the torch-free modules (`gradreg.methods`,
`gradreg.names`) stay cheap to import for the sweep spec and the API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradreg.lazy import lazy_attributes

_EXPORTS = {
    "ESTIMATORS": "gradreg.curvature.fisher",
    "MAP": "gradreg.posteriors.baselines",
    "METHODS": "gradreg.methods",
    "GaussianPosterior": "gradreg.posteriors.gaussian",
    "IVON": "gradreg.posteriors.ivon",
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
    "IVON",
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

if TYPE_CHECKING:
    from gradreg.config import TrainConfig
    from gradreg.curvature.fisher import ESTIMATORS, fisher_diagonal
    from gradreg.evaluation import metrics
    from gradreg.methods import METHODS, posterior
    from gradreg.posteriors.baselines import MAP, SamplingVI
    from gradreg.posteriors.gaussian import GaussianPosterior, LossTerms
    from gradreg.posteriors.ivon import IVON
    from gradreg.posteriors.laplace import Laplace
    from gradreg.posteriors.variational_laplace import VariationalLaplace
    from gradreg.train import fit


_load, _ = lazy_attributes(__name__, {k: v for k, v in _EXPORTS.items() if v})


def __getattr__(name: str) -> Any:
    if name == "__version__":  # the installed distribution's: pyproject.toml is its one home
        from gradreg.version import distribution_version

        return distribution_version()
    if name == "metrics":  # a module, kept under its old name
        globals()[name] = importlib.import_module("gradreg.evaluation.metrics")
        return globals()[name]
    return _load(name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
