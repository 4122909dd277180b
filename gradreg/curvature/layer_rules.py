"""Per-layer rules for the per-example Fisher: one table entry per layer type.

`capture_layers` records each supported layer's input and adds a zero "probe" to its output;
the gradient with respect to the probe is the gradient with respect to the layer's output,
even when later operations modify that output in place (e.g. ReLU(inplace=True)). A layer's
rule turns that input and output gradient into Σ_i w_i (per-example gradient)² for each of
its parameters, without one backward per example. A new layer type is one rule function and
one entry in `LAYER_RULES`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def at_least_fp32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in _LOW_PRECISION else t


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
    """Why the per-layer identities do not apply to ``model``, or None when they do: every
    layer in the way, named (`per_example_obstacles`, joined)."""
    problems = per_example_obstacles(model, params)
    return "; ".join(problems) if problems else None


def per_example_obstacles(model: nn.Module, params: Sequence[nn.Parameter]) -> list[str]:
    """Each reason the per-layer identities do not apply to ``model``: BatchNorm layers that
    normalise with batch statistics, then layers with parameters but no rule (grouped by
    type), then layers whose configuration their rule cannot do; empty when they apply."""
    batch_statistics: dict[str, list[str]] = {}
    no_rule: dict[str, list[str]] = {}
    configurations: list[str] = []
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, _BatchNorm) and module.training:
            batch_statistics.setdefault(kind, []).append(name)
            continue
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        rule = rule_for(module)
        if rule is None:
            no_rule.setdefault(kind, []).append(name)
            continue
        problem = rule.obstacle(module) if rule.obstacle else None
        if problem:
            configurations.append(f"layer {name!r} {problem}")
    problems = [
        f"{_layers(names, kind)} {_verb(names, 'normalises', 'normalise')} with batch "
        "statistics, which couple the examples, so per-example gradients do not exist"
        for kind, names in batch_statistics.items()
    ]
    problems += [
        f"{_layers(names, kind)} {_verb(names, 'has', 'have')} parameters but no per-example rule"
        for kind, names in no_rule.items()
    ]
    problems += configurations
    if not problems:
        covered = {
            id(p) for m in model.modules() if rule_for(m) for p in m.parameters(recurse=False)
        }
        if any(id(p) not in covered for p in params):
            problems.append(
                "some trainable parameters are not held by a layer with a per-example rule"
            )
    return problems


_NAMED = 5  # layers a message names, at most


def _layers(names: list[str], kind: str) -> str:
    """ "layer 'norm' (LayerNorm)", "layers 'a', 'b' and 'c' (LayerNorm)"."""
    if len(names) == 1:
        return f"layer {_quoted(names[0])} ({kind})"
    quoted = [_quoted(name) for name in names[:_NAMED]]
    if len(names) > _NAMED:
        listed = f"{', '.join(quoted)}, and {len(names) - _NAMED} more"
    else:
        listed = f"{', '.join(quoted[:-1])} and {quoted[-1]}"
    return f"layers {listed} ({kind})"


def _quoted(name: str) -> str:
    return repr(name) if name else "'' (the model itself)"


def _verb(names: list[str], one: str, several: str) -> str:
    return one if len(names) == 1 else several


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
        if rule_for(m) and any(p.requires_grad for p in m.parameters(False))
    ]
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------- the rules


def _weighted_batch_sum(squares: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return squares.sum(0)
    weighted: Tensor = torch.tensordot(weights.to(squares.dtype), squares, dims=1)
    return weighted


def _linear_squares(
    module: nn.Linear, a: Tensor, g: Tensor, weights: Tensor | None
) -> list[Tensor]:
    a, g = at_least_fp32(a), at_least_fp32(g)
    has_bias = module.bias is not None
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


def _linear_totals(module: nn.Linear, a: Tensor, g: Tensor, weights: Tensor | None) -> list[Tensor]:
    """Σ over entries per parameter; Σ_{o,k} g_io² a_ik² = ‖g_i‖² ‖a_i‖² needs no matrix."""
    if a.dim() != 2:
        return [sq.sum() for sq in _linear_squares(module, a, g, weights)]
    g_norms = at_least_fp32(g).square().sum(1)
    if weights is not None:
        g_norms = g_norms * weights.to(g_norms.dtype)
    a_norms = at_least_fp32(a).square().sum(1)
    return [(g_norms * a_norms).sum(), g_norms.sum()][: 1 + (module.bias is not None)]


def _linear_weighted(
    module: nn.Linear, a: Tensor, g: Tensor, variances: Sequence[Tensor]
) -> Tensor:
    """Per example and variance column k: Σ_λ σ²_λk (per-example gradient_λ)²."""
    a, g = at_least_fp32(a), at_least_fp32(g)
    var = [v.to(g.dtype) for v in variances]
    if a.dim() == 2:
        out = torch.einsum("bo,oik,bi->bk", g.square(), var[0], a.square())
        g_sum = g
    else:
        a = a.reshape(a.shape[0], -1, a.shape[-1])
        g = g.reshape(g.shape[0], -1, g.shape[-1])
        per_example = torch.einsum("bto,bti->boi", g, a)
        out = torch.einsum("boi,oik->bk", per_example.square(), var[0])
        g_sum = g.sum(1)
    if module.bias is not None:
        out = out + g_sum.square() @ var[1]
    return out


def _conv_per_example(module: nn.Conv1d | nn.Conv2d, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """(per-example weight gradients (B, O, in·kernel), output gradients (B, O, L))."""
    a, g = at_least_fp32(a), at_least_fp32(g)
    padding = module.padding
    if isinstance(padding, str):  # _conv_obstacle refuses such a layer before it gets here
        raise ValueError(f"the per-example rule needs integer padding, got {padding!r}")
    if isinstance(module, nn.Conv1d):
        a = a.unsqueeze(2)
        kernel, stride = (1, *module.kernel_size), (1, *module.stride)
        padding, dilation = (0, *padding), (1, *module.dilation)
    else:
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    cols = F.unfold(a, kernel, dilation=dilation, padding=padding, stride=stride)
    g = g.reshape(g.shape[0], g.shape[1], -1)
    return torch.einsum("bol,bkl->bok", g, cols), g


def _conv_squares(
    module: nn.Conv1d | nn.Conv2d, a: Tensor, g: Tensor, weights: Tensor | None
) -> list[Tensor]:
    per_example, g = _conv_per_example(module, a, g)
    out = [_weighted_batch_sum(per_example.square(), weights).reshape(module.weight.shape)]
    if module.bias is not None:
        out.append(_weighted_batch_sum(g.sum(2).square(), weights))
    return out


def _conv_weighted(
    module: nn.Conv1d | nn.Conv2d, a: Tensor, g: Tensor, variances: Sequence[Tensor]
) -> Tensor:
    per_example, g = _conv_per_example(module, a, g)
    var = [v.to(per_example.dtype) for v in variances]
    weight_var = var[0].reshape(per_example.shape[1], per_example.shape[2], -1)
    out = torch.einsum("bok,okc->bc", per_example.square(), weight_var)
    if module.bias is not None:
        out = out + g.sum(2).square() @ var[1]
    return out


def _conv_obstacle(module: nn.Conv1d | nn.Conv2d) -> str | None:
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        return (
            f"uses groups={module.groups}, padding={module.padding!r}, "
            f"padding_mode={module.padding_mode!r}; the per-example rule needs groups=1, "
            "integer padding and padding_mode='zeros'"
        )
    return None


M = TypeVar("M", bound=nn.Module)
SquaresRule = Callable[[M, Tensor, Tensor, "Tensor | None"], list[Tensor]]
WeightedRule = Callable[[M, Tensor, Tensor, Sequence[Tensor]], Tensor]


@dataclass(frozen=True)
class LayerRule(Generic[M]):
    """The per-example Fisher of one layer type, from its inputs ``a`` and output gradients
    ``g``: per parameter, in the order the module declares them (weight, then bias),
    Σ_i w_i (per-example gradient)².

    ``weighted`` (optional) gives, per example i and column k of the per-parameter variances
    σ² (each shaped like its parameter, plus a trailing K), Σ_λ σ²_λk (∂_λ of example i)²:
    what the linearised predictive's logit variances need (`gradreg.posteriors.glm`).
    """

    squares: SquaresRule[M]
    totals: SquaresRule[M] | None = None  # each parameter's sum over entries, if cheaper
    obstacle: Callable[[M], str | None] | None = None  # configurations it cannot do
    weighted: WeightedRule[M] | None = None


# A new layer type is one rule function and one entry here (a rule for M takes an M).
LAYER_RULES: dict[type[nn.Module], LayerRule[Any]] = {
    nn.Linear: LayerRule(_linear_squares, totals=_linear_totals, weighted=_linear_weighted),
    nn.Conv1d: LayerRule(_conv_squares, obstacle=_conv_obstacle, weighted=_conv_weighted),
    nn.Conv2d: LayerRule(_conv_squares, obstacle=_conv_obstacle, weighted=_conv_weighted),
}


def rule_for(module: nn.Module) -> LayerRule[Any] | None:
    """The rule of ``module``'s type or of the nearest base class that has one."""
    for cls in type(module).__mro__:
        if cls in LAYER_RULES:
            return LAYER_RULES[cls]
    return None


def layer_squares(
    layer: CapturedLayer, grad_out: Tensor, weights: Tensor | None, total: bool = False
) -> dict[int, Tensor]:
    """Per trainable parameter of the layer: Σ_i w_i (per-example gradient)², or with
    ``total`` just its sum over the parameter's entries."""
    module = layer.module
    own = list(module.parameters(recurse=False))  # the order its rule returns them in
    rule = rule_for(module)
    assert rule is not None  # only layers with a rule are captured
    if total and rule.totals is not None:
        sums = rule.totals(module, layer.inputs, grad_out, weights)
    else:
        squares = rule.squares(module, layer.inputs, grad_out, weights)
        sums = [sq.sum() for sq in squares] if total else squares
    return {id(p): v for p, v in zip(own, sums, strict=False) if p.requires_grad}


def layer_weighted(
    layer: CapturedLayer, grad_out: Tensor, variances: dict[int, Tensor]
) -> Tensor | None:
    """Per example and column: Σ over the layer's parameters of σ² · (per-example ∂)²
    (see `LayerRule.weighted`), or None when its rule has no ``weighted``. ``variances``
    maps a trainable parameter's id to its σ² with a trailing column dimension."""
    rule = rule_for(layer.module)
    assert rule is not None
    if rule.weighted is None:
        return None
    own = list(layer.module.parameters(recurse=False))
    columns = next(iter(variances.values())).shape[-1]
    var = [
        variances[id(p)] if id(p) in variances else p.new_zeros((*p.shape, columns)) for p in own
    ]
    return rule.weighted(layer.module, layer.inputs, grad_out, var)
