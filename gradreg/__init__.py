"""gradreg: Variational Laplace (the Taylor-expanded ELBO) for Bayesian neural networks."""

from gradreg import metrics
from gradreg.baselines import MAP, Laplace, SamplingVI
from gradreg.fisher import ESTIMATORS, fisher_diagonal
from gradreg.objective import VariationalLaplace
from gradreg.posterior import GaussianPosterior, LossTerms

__all__ = [
    "ESTIMATORS",
    "MAP",
    "GaussianPosterior",
    "Laplace",
    "LossTerms",
    "SamplingVI",
    "VariationalLaplace",
    "fisher_diagonal",
    "metrics",
]
__version__ = "0.1.0"
