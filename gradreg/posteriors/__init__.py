"""The posteriors: the factorised Gaussian (`gaussian`), Variational Laplace
(`variational_laplace`), MAP and sampling VI (`baselines`), post-hoc Laplace (`laplace`) and
its linearised predictive (`glm`)."""
