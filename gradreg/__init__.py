"""gradreg: Variational Laplace (the Taylor-expanded ELBO) for Bayesian neural networks."""

from gradreg import metrics
from gradreg.fisher import ESTIMATORS, fisher_diagonal
from gradreg.objective import LossTerms, VariationalLaplace

__all__ = ["ESTIMATORS", "LossTerms", "VariationalLaplace", "fisher_diagonal", "metrics"]
__version__ = "0.1.0"
