"""The linearised (GLM) predictive of a Gaussian posterior over a network's weights.

Around the posterior mean μ the network is replaced by its first-order expansion
f(x, w) ≈ f(x, μ) + J(x)(w − μ), so with w ~ N(μ, diag σ²) the logits are Gaussian:
f ~ N(f_μ(x), J diag(σ²) Jᵀ). Two ways to turn that into class probabilities:

* ``probit``: softmax(f_μ / sqrt(1 + π/8 · v)), with v_c = Σ_λ σ_λ² J_cλ² the logits'
  marginal variances (the multiclass probit approximation, as laplace-torch uses);
* ``mc``: the average of softmax(f_μ + J(σ ⊙ ε)) over draws ε ~ N(0, I), each one a
  forward-mode Jacobian-vector product, exact for the linearised model.

Both work for any architecture through `torch.func`; BatchNorm must be in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vmap

from gradreg.curvature.layer_rules import (
    CapturedLayer,
    capture_layers,
    layer_weighted,
    per_example_obstacle,
    rule_for,
)

# Jacobian chunks hold at most this many numbers (examples × classes × weights).
JACOBIAN_BUDGET = 2**24
RULE_CHUNK = 1024  # examples per forward on the per-layer-rule path
MC_BUDGET = 2**22  # logits (draws × examples × classes) per vectorised batch of JVPs


def _named_trainable(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def logit_variances(
    model: nn.Module, x: Tensor, variances: Sequence[Tensor] | Tensor
) -> tuple[Tensor, Tensor]:
    """(f_μ(x), v) with v[i, c] = Σ_λ σ_λ² (∂f_c(x_i)/∂λ)², in float64.

    ``variances`` is one tensor of σ² per trainable parameter (shaped like it), or a matrix
    (P, K) of K flat variance vectors: then v has shape (N, C, K), one per column. Models the
    per-layer rules cover (`gradreg.curvature.layer_rules`) take one backward per class; others go
    through per-example Jacobians (`torch.func`), which is exact but slower.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    stacked = isinstance(variances, Tensor) and variances.dim() == 2
    if isinstance(variances, Tensor) and stacked:
        flat = variances.double()
    else:
        flat = torch.cat([v.reshape(-1) for v in variances])[:, None].double()
    if per_example_obstacle(model, params) is None and _rules_cover(model):
        f_mu, v = _by_layer_rules(model, x, params, flat)
    else:
        f_mu, v = _by_jacobians(model, x, flat)
    return f_mu, (v if stacked else v[..., 0])


def _rules_cover(model: nn.Module) -> bool:
    return all(
        rule.weighted is not None
        for m in model.modules()
        if any(p.requires_grad for p in m.parameters(recurse=False))
        and (rule := rule_for(m)) is not None
    )


def _by_layer_rules(
    model: nn.Module, x: Tensor, params: Sequence[Tensor], flat: Tensor
) -> tuple[Tensor, Tensor]:
    columns = flat.shape[1]
    pieces = flat.split([p.numel() for p in params])
    variances = {
        id(p): piece.reshape(*p.shape, columns) for p, piece in zip(params, pieces, strict=True)
    }
    means, out = [], []
    for xb in x.split(RULE_CHUNK):
        with torch.enable_grad(), capture_layers(model) as capture:
            logits = model(xb)
        probes = [layer.probe for layer in capture.layers]
        per_class = []
        for c in range(logits.shape[1]):
            grads = torch.autograd.grad(
                logits[:, c].sum(), probes, retain_graph=c + 1 < logits.shape[1]
            )
            with torch.no_grad():
                first, *rest = [
                    _weighted(layer, grad, variances)
                    for layer, grad in zip(capture.layers, grads, strict=True)
                ]
                per_class.append(sum(rest, first))
        means.append(logits.detach().double())
        out.append(torch.stack(per_class, dim=1))
    return torch.cat(means), torch.cat(out)


def _weighted(layer: CapturedLayer, grad: Tensor, variances: dict[int, Tensor]) -> Tensor:
    weighted = layer_weighted(layer, grad, variances)
    assert weighted is not None  # _rules_cover: every layer's rule has one
    return weighted.double()


def _by_jacobians(model: nn.Module, x: Tensor, flat: Tensor) -> tuple[Tensor, Tensor]:
    params = _named_trainable(model)
    names = list(params)

    def logits(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        out: Tensor = functional_call(model, p, (xi.unsqueeze(0),))
        return out.squeeze(0)

    with torch.no_grad():
        f_mu = model(x)
    n_classes = f_mu.shape[1]
    n_weights = sum(p.numel() for p in params.values())
    chunk = max(1, min(len(x), JACOBIAN_BUDGET // max(1, n_classes * n_weights)))
    out = []
    for xb in x.split(chunk):
        jac = vmap(jacrev(logits), in_dims=(None, 0))(params, xb)
        squares = torch.cat(
            [jac[n].reshape(len(xb), n_classes, -1).double().square() for n in names], dim=2
        )
        out.append(squares @ flat)
    return f_mu.double(), torch.cat(out)


def probit_log_probs(f_mu: Tensor, variances: Tensor) -> Tensor:
    """log softmax(f_μ / sqrt(1 + π/8 · v)); ``variances`` may carry extra trailing dims
    (one column per candidate posterior), which then lead the result: (K, N, C)."""
    if variances.dim() == 3:
        scaled = f_mu.unsqueeze(0) / (1 + math.pi / 8 * variances.permute(2, 0, 1)).sqrt()
    else:
        scaled = f_mu / (1 + math.pi / 8 * variances).sqrt()
    return torch.log_softmax(scaled, dim=-1)


def mc_log_probs(
    model: nn.Module,
    x: Tensor,
    variances: Sequence[Tensor],
    n_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """log of the average of softmax(f_μ + J(σ ⊙ ε)) over ``n_samples`` draws, in float64."""
    params = _named_trainable(model)
    std = [v.sqrt() for v in variances]

    def logits(p: dict[str, Tensor]) -> Tensor:
        out: Tensor = functional_call(model, p, (x,))
        return out

    def change(tangent: dict[str, Tensor]) -> Tensor:
        out: Tensor = jvp(logits, (params,), (tangent,))[1]
        return out

    with torch.no_grad():
        f_mu = model(x)
    per_call = max(1, MC_BUDGET // max(1, f_mu.numel()))
    draws = []
    for start in range(0, n_samples, per_call):
        tangents = [
            {
                name: s * torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
                for (name, p), s in zip(params.items(), std, strict=True)
            }
            for _ in range(min(per_call, n_samples - start))
        ]
        batch = {name: torch.stack([t[name] for t in tangents]) for name in params}
        changes = vmap(change)(batch)
        draws.append(torch.log_softmax((f_mu + changes).double(), dim=-1))
    return torch.logsumexp(torch.cat(draws), dim=0) - math.log(n_samples)
