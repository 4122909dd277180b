"""Diagonal Fisher estimators for classifiers that return logits.

Every estimator returns the batch sum ``Σ_{i∈B} F_iλ`` of a diagonal Fisher estimate, one
tensor per trainable parameter, in ``model.parameters()`` order:

* ``exact`` — ``Σ_i Σ_c p(c|x_i) (∂_λ log p(c|x_i))²``; enumerates the classes.
* ``sampled`` — ``(∂_λ Σ_i log p(ỹ_i|x_i))²`` with ỹ_i drawn from the model: one ordinary
  backward, unbiased for the batch Fisher because model-sampled scores have zero mean.
* ``per_example`` — ``Σ_i (∂_λ log p(ỹ_i|x_i))²`` from per-example gradients, computed with the
  per-layer identities (Linear: squared inputs times squared output-gradients; Conv via
  unfolded inputs) rather than one backward per example.

Given ``labels``, ``sampled`` and ``per_example`` use them instead of model samples
(``per_example`` with the true labels is the empirical Fisher).

BatchNorm in training mode couples the examples of a batch, so per-example gradients do not
exist: ``per_example`` refuses such models, ``sampled`` stays unbiased for the Fisher of the
batch-coupled predictive, and ``exact`` falls back to one backward per (example, class).

With ``create_graph=True`` the result stays differentiable in the parameters (its gradient is
a Hessian-vector product), which is how the Variational Laplace regulariser uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gradreg.curvature.layer_rules import (
    LayerCapture,
    at_least_fp32,
    capture_layers,
    layer_squares,
    per_example_obstacle,
)

ESTIMATORS = ("exact", "sampled", "per_example")


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the posterior covers; a model without any is an error."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters: a posterior over the "
            "weights needs at least one parameter with requires_grad=True"
        )
    return params


def check_estimator(estimator: str) -> str:
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"unknown Fisher estimator {estimator!r}; accepted: {', '.join(ESTIMATORS)}"
        )
    return estimator


def sample_labels(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One label per row drawn from softmax(logits); not differentiable."""
    probs = torch.softmax(logits.detach().float(), dim=-1)
    if not bool(torch.isfinite(probs).all()):
        raise FloatingPointError("the model returned non-finite logits; cannot sample labels")
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def check_labels(labels: Tensor, logits: Tensor, what: str = "labels") -> Tensor:
    """Integer labels, one per example, each within [0, n_classes)."""
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(
            f"{what} must be an integer tensor of class indices, got dtype {labels.dtype}"
        )
    n, n_classes = logits.shape
    if labels.shape != (n,):
        raise ValueError(
            f"{what} must have shape ({n},) to match the batch, got {tuple(labels.shape)}"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        bad = low if low < 0 else high
        raise ValueError(f"{what} contain {bad}, outside the model's classes 0..{n_classes - 1}")
    return labels


def check_logits(logits: Tensor) -> Tensor:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(
            "the model must return logits of shape (batch, n_classes) with n_classes >= 2, "
            f"got {tuple(logits.shape)}"
        )
    return logits


def _per_layer_fisher(
    capture: LayerCapture,
    params: Sequence[nn.Parameter],
    log_probs: Tensor,
    labels: Tensor | None,
    create_graph: bool,
    total: bool = False,
) -> Tensor:
    """Per-layer identities for `per_example` (labels given) or `exact` (labels None).

    Returns the flat Fisher, or with ``total`` its sum over all parameters.
    """
    probes = [layer.probe for layer in capture.layers]
    totals: dict[int, Tensor] = {}
    jobs: list[tuple[Tensor, Tensor | None]]
    if labels is not None:
        jobs = [(log_probs.gather(1, labels[:, None]).sum(), None)]
    else:
        probs = log_probs.exp() if create_graph else log_probs.detach().exp()
        jobs = [(log_probs[:, c].sum(), probs[:, c]) for c in range(log_probs.shape[1])]
    for k, (objective, weights) in enumerate(jobs):
        grads = torch.autograd.grad(
            objective,
            probes,
            create_graph=create_graph,
            retain_graph=create_graph or k + 1 < len(jobs),
        )
        with torch.set_grad_enabled(create_graph):
            for layer, grad_out in zip(capture.layers, grads, strict=True):
                for key, value in layer_squares(layer, grad_out, weights, total).items():
                    totals[key] = totals[key] + value if key in totals else value
    if total:
        return torch.stack([totals[id(p)] for p in params]).sum().to(params[0].dtype)
    return _flat([totals[id(p)] for p in params], params)


def _flat(tensors: Sequence[Tensor], params: Sequence[nn.Parameter]) -> Tensor:
    return torch.cat([t.reshape(-1).to(p.dtype) for t, p in zip(tensors, params, strict=True)])


def unflatten(flat: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """Split a concatenation over ``params`` back into tensors shaped like them."""
    pieces = flat.split([p.numel() for p in params])
    return [piece.view(p.shape) for piece, p in zip(pieces, params, strict=True)]


def _brute_force_exact(
    params: Sequence[nn.Parameter], log_probs: Tensor, create_graph: bool
) -> Tensor:
    """One backward per (example, class): exact for any architecture, slow."""
    totals = [torch.zeros_like(p) for p in params]
    n, n_classes = log_probs.shape
    probs = log_probs.exp() if create_graph else log_probs.detach().exp()
    for i in range(n):
        for c in range(n_classes):
            grads = torch.autograd.grad(
                log_probs[i, c], params, retain_graph=True, create_graph=create_graph
            )
            totals = [t + probs[i, c] * g.square() for t, g in zip(totals, grads, strict=True)]
    return _flat(totals, params)


def _sampled_fisher(
    params: Sequence[nn.Parameter], log_probs: Tensor, labels: Tensor, create_graph: bool
) -> Tensor:
    objective = log_probs.gather(1, labels[:, None]).sum()
    grads = torch.autograd.grad(
        objective, params, create_graph=create_graph, retain_graph=create_graph
    )
    return torch.cat([g.reshape(-1) for g in grads]).square()


# --------------------------------------------------------------------------------------------
# Front doors.


class FisherPass:
    """One forward pass prepared for a Fisher estimator.

    Use as ``with FisherPass(model, estimator) as fp: logits = fp.forward(x)`` and then
    ``fp.estimate(labels=..., ...)``; the forward's logits can serve other losses too, which
    is how the VL objective shares one forward between its likelihood and its regulariser.
    """

    def __init__(self, model: nn.Module, estimator: str) -> None:
        self.model = model
        self.estimator = check_estimator(estimator)
        self.params = trainable_parameters(model)
        obstacle = per_example_obstacle(model, self.params) if estimator != "sampled" else None
        if estimator == "per_example" and obstacle:
            raise ValueError(
                f"fisher='per_example' cannot handle this model: {obstacle}. "
                "Use fisher='sampled', which works for any architecture."
            )
        self.uses_layers = estimator != "sampled" and obstacle is None
        self._capture: LayerCapture | None = None
        self._logits: Tensor | None = None
        self.log_probs: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Run the model once; keeps the logits and their float32+ log-softmax."""
        logits: Tensor
        if self.uses_layers:
            with capture_layers(self.model) as capture:
                logits = self.model(x)
            self._capture = capture
        else:
            logits = self.model(x)
        self._logits = check_logits(logits)
        self.log_probs = torch.log_softmax(at_least_fp32(logits), dim=-1)
        return logits

    def estimate(
        self,
        labels: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        create_graph: bool = False,
    ) -> list[Tensor]:
        """The batch-sum Fisher, one tensor per trainable parameter."""
        flat = self.estimate_flat(labels, generator=generator, create_graph=create_graph)
        return unflatten(flat, self.params)

    def estimate_flat(
        self,
        labels: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        create_graph: bool = False,
    ) -> Tensor:
        """The same, concatenated over the parameters in order (fewer small tensor ops)."""
        return self._estimate(labels, generator, create_graph, total=False)

    def estimate_total(
        self,
        labels: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        create_graph: bool = False,
    ) -> Tensor:
        """Σ_λ F̂_λ over all parameters: all a uniform σ² needs, cheaper for Linear layers."""
        return self._estimate(labels, generator, create_graph, total=True)

    def _estimate(
        self,
        labels: Tensor | None,
        generator: torch.Generator | None,
        create_graph: bool,
        total: bool,
    ) -> Tensor:
        if self._logits is None or self.log_probs is None:
            raise RuntimeError("FisherPass.estimate() needs forward(x) first")
        logits, log_probs = self._logits, self.log_probs
        if self.estimator == "exact":
            if self._capture is not None:
                return _per_layer_fisher(
                    self._capture, self.params, log_probs, None, create_graph, total
                )
            flat = _brute_force_exact(self.params, log_probs, create_graph)
            return flat.sum() if total else flat
        if labels is None:
            labels = sample_labels(logits, generator)
        else:
            check_labels(labels, logits)
        if self.estimator == "sampled":
            flat = _sampled_fisher(self.params, log_probs, labels, create_graph)
            return flat.sum() if total else flat
        assert self._capture is not None
        return _per_layer_fisher(self._capture, self.params, log_probs, labels, create_graph, total)


def fisher_diagonal(
    model: nn.Module,
    x: Tensor,
    *,
    estimator: str = "exact",
    labels: Tensor | None = None,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> list[Tensor]:
    """Batch-sum diagonal Fisher of ``model`` on ``x``, one tensor per trainable parameter.

    ``labels=None`` samples labels from the model (``exact`` needs none and ignores them);
    ``generator`` seeds that sampling. ``create_graph=True`` keeps the result differentiable.
    """
    fisher_pass = FisherPass(model, estimator)
    with torch.enable_grad():
        fisher_pass.forward(x)
        return fisher_pass.estimate(labels, generator=generator, create_graph=create_graph)
