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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

ESTIMATORS = ("exact", "sampled", "per_example")
SUPPORTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


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


# --------------------------------------------------------------------------------------------
# Layer capture: the inputs of each supported layer and a zero "probe" added to its output.
# The gradient with respect to the probe is the gradient with respect to the layer's output,
# even when later operations modify that output in place (e.g. ReLU(inplace=True)).


@dataclass
class CapturedLayer:
    name: str
    module: nn.Module
    inputs: Tensor
    probe: Tensor


class LayerCapture:
    def __init__(self) -> None:
        self.layers: list[CapturedLayer] = []


def per_example_obstacle(model: nn.Module, params: Sequence[nn.Parameter]) -> str | None:
    """Why the per-layer identities do not apply to ``model``, or None when they do."""
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.training:
            return (
                f"layer {name!r} ({type(module).__name__}) normalises with batch statistics, which "
                "couple the examples, so per-example gradients do not exist"
            )
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if not isinstance(module, SUPPORTED_LAYERS):
            return (
                f"layer {name!r} ({type(module).__name__}) has parameters but no per-example rule"
            )
        if isinstance(module, nn.Conv1d | nn.Conv2d) and (
            module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str)
        ):
            return (
                f"layer {name!r} uses groups={module.groups}, padding={module.padding!r}, "
                f"padding_mode={module.padding_mode!r}; the per-example rule needs groups=1, "
                "integer padding and padding_mode='zeros'"
            )
    covered = {
        id(p)
        for m in model.modules()
        if isinstance(m, SUPPORTED_LAYERS)
        for p in m.parameters(recurse=False)
    }
    if any(id(p) not in covered for p in params):
        return "some trainable parameters are not held by a Linear or Conv layer"
    return None


@contextmanager
def capture_layers(model: nn.Module) -> Iterator[LayerCapture]:
    capture = LayerCapture()
    names = {module: name for name, module in model.named_modules()}
    seen: set[nn.Module] = set()

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        if module in seen:
            raise ValueError(
                f"layer {names[module]!r} ran twice in one forward pass (shared weights); the "
                "per-example Fisher needs each layer called once: use fisher='sampled'"
            )
        seen.add(module)
        probe = torch.zeros_like(output, requires_grad=True)
        capture.layers.append(CapturedLayer(names[module], module, inputs[0], probe))
        return output + probe

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, SUPPORTED_LAYERS) and any(p.requires_grad for p in m.parameters(False))
    ]
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------------------------
# Per-layer identities: Σ_i w_i (per-example gradient)² from layer inputs and output gradients.


def at_least_fp32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in _LOW_PRECISION else t


def _weighted_batch_sum(squares: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return squares.sum(0)
    return torch.tensordot(weights.to(squares.dtype), squares, dims=1)


def _linear_squares(a: Tensor, g: Tensor, weights: Tensor | None, has_bias: bool) -> list[Tensor]:
    a, g = at_least_fp32(a), at_least_fp32(g)
    if a.dim() == 2:
        gw = g.square() if weights is None else g.square() * weights.to(g.dtype)[:, None]
        out = [gw.t() @ a.square()]
        if has_bias:
            out.append(gw.sum(0))
        return out
    # Inputs with extra dimensions (e.g. tokens): the per-example gradient sums over them first.
    a = a.reshape(a.shape[0], -1, a.shape[-1])
    g = g.reshape(g.shape[0], -1, g.shape[-1])
    out = [_weighted_batch_sum(torch.einsum("bto,bti->boi", g, a).square(), weights)]
    if has_bias:
        out.append(_weighted_batch_sum(g.sum(1).square(), weights))
    return out


def _conv_squares(
    module: nn.Conv1d | nn.Conv2d, a: Tensor, g: Tensor, weights: Tensor | None
) -> list[Tensor]:
    a, g = at_least_fp32(a), at_least_fp32(g)
    if isinstance(module, nn.Conv1d):
        a = a.unsqueeze(2)
        kernel, stride = (1, *module.kernel_size), (1, *module.stride)
        padding, dilation = (0, *module.padding), (1, *module.dilation)
    else:
        kernel, stride = module.kernel_size, module.stride
        padding, dilation = module.padding, module.dilation
    cols = F.unfold(a, kernel, dilation=dilation, padding=padding, stride=stride)
    g = g.reshape(g.shape[0], g.shape[1], -1)
    per_example = torch.einsum("bol,bkl->bok", g, cols)
    out = [_weighted_batch_sum(per_example.square(), weights).reshape(module.weight.shape)]
    if module.bias is not None:
        out.append(_weighted_batch_sum(g.sum(2).square(), weights))
    return out


def _layer_squares(
    layer: CapturedLayer, grad_out: Tensor, weights: Tensor | None, total: bool = False
) -> dict[int, Tensor]:
    """Per trainable parameter of the layer: Σ_i w_i (per-example gradient)², or with
    ``total`` just its sum over the parameter's entries."""
    module = layer.module
    own = [module.weight] + ([module.bias] if module.bias is not None else [])
    if total and isinstance(module, nn.Linear) and layer.inputs.dim() == 2:
        # Σ_{o,k} g_io² a_ik² = ‖g_i‖² ‖a_i‖²: no (out × in) matrix needed for the sum.
        g_norms = at_least_fp32(grad_out).square().sum(1)
        if weights is not None:
            g_norms = g_norms * weights.to(g_norms.dtype)
        a_norms = at_least_fp32(layer.inputs).square().sum(1)
        sums = [(g_norms * a_norms).sum(), g_norms.sum()]
    else:
        if isinstance(module, nn.Linear):
            squares = _linear_squares(layer.inputs, grad_out, weights, module.bias is not None)
        else:
            squares = _conv_squares(module, layer.inputs, grad_out, weights)
        sums = [sq.sum() for sq in squares] if total else squares
    return {id(p): v for p, v in zip(own, sums, strict=False) if p.requires_grad}


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
                for key, value in _layer_squares(layer, grad_out, weights, total).items():
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
