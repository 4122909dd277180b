"""The μ-gradient of the sampled VL objective without a double backward.

With labels ỹ drawn from the model and S(μ) = Σ_i log p(ỹ_i|x_i, μ), the sampled regulariser
is R = (1/2B) Σ_λ σ_λ² g̃_λ² with g̃ = ∇S(μ). Its μ-gradient is the Hessian-vector product
(1/B)·H_S v with v = σ² ⊙ g̃, which autograd builds by differentiating through the graph of
the first backward (``create_graph=True``). The same product is, to first order in h,

    H_S v ≈ (∇S(μ + h·v) − ∇S(μ)) / h.

A step then takes: a forward at μ (the loss value, exactly as autograd's path computes it),
one backward for g̃, and a forward and backward at μ + h·v of NLL + S/(B·h), from which
g̃/(B·h) is subtracted. That gives ∇NLL + ∇R with the NLL's gradient taken at μ + h·v, a
step of length √ε away (see `step_size`): an error of the same order as the difference's
own. Two forwards and two backwards, no graph kept beyond one pass: about twice MAP's time,
and MAP's memory.

The perturbed pass replays the first forward exactly except for the weights: the same labels,
the same dropout masks (the RNG is rewound for it and put back after), and batch statistics
of the perturbed network (a BatchNorm network's S couples the batch the same way at both
points), while running statistics stay untouched (the pass writes to copies of the buffers).
Nothing of it outlives the step: the model's parameters are never moved.

It also keeps every kink where it was (`KinkPattern`): each ReLU unit on the side of zero it
was on, each max-pool window on the element it chose. Autograd's Hessian is that of the
network's current linear piece; without the freeze, units that cross zero inside the step
add jumps of the gradient divided by h. In float32, where h must be large enough to rise
above rounding, that changed the gradient by 35% on a ReLU MLP and by 9× on a small ResNet
(`benchmarks/finite_difference_accuracy.py`). Kinks in a model's own functional code
(``F.relu`` inside a ``forward``) are not frozen: the project's models use the modules.

Both passes run in true float32 (`precision.tf32` off) even where torch lets convolutions
run in TF32, its default on NVIDIA GPUs: TF32 rounds weights and activations to 10 bits, so
a step of length √ε moves few of them by more than their rounding. On a ResNet-20 the
difference was 0.27-0.32 off on an H200 in TF32, and 0.25 with TF32's rounding emulated on
the CPU (`precision.EmulatedTF32`), against 6e-3 with both passes in float32; with the
perturbed pass alone in float32 it was worse still (the two passes' roundings differ).

`Variant` names the other ways this module can take the product, measured by
`benchmarks/regulariser_grad_variants.py` (issue 29): a central difference (three passes,
error O(h²), so the step can be ∛ε), a step of the method's own scale (h = 1/B: the weights
move by σ²⊙g̃/B), the passes in whatever arithmetic torch's flags give (TF32 included), or
only the perturbed one in float32, and forward-over-reverse differentiation: the gradient
of S taken along v by forward-mode AD through the backward (``torch.autograd.forward_ad``),
an exact product with no cancellation and no kinks to freeze (the derivative is taken at μ,
on the current linear piece, as autograd's), which costs a forward and a backward carrying
tangents (about three times a plain pass) plus a plain backward for the NLL. Reverse-over-
forward, the cheaper-looking order (a backward through a forward-mode pass), is wrong in
torch 2.13 through training-mode BatchNorm (4-140% off in float64 on small networks), so
it is not offered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from gradreg.curvature.layer_rules import at_least_fp32
from gradreg.curvature.precision import (
    TF32_EPSILON,
    emulating_tf32,
    tf32,
    tf32_convolutions,
    tf32_matmuls,
)

__all__ = [
    "TF32_EPSILON",
    "KinkPattern",
    "RngReplay",
    "Variant",
    "forward_epsilon",
    "nll_and_score",
    "objective_gradient",
    "step_size",
]

_NORM_FLOOR = 1e-30
# How the product H_S·v is taken: a forward difference (two passes in all), a central one
# (three), or forward-over-reverse differentiation (a pass carrying tangents).
SCHEMES: tuple[str, ...] = ("forward", "central", "forward_over_reverse")
# The step h: balanced between truncation and rounding (√ε for a forward difference, ∛ε for a
# central one, `step_size`), or the method's own scale, 1/B (the weights move by σ²⊙g̃/B).
STEPS: tuple[str, ...] = ("balanced", "method_scale")
# The passes' arithmetic: true float32 for both, for the perturbed one only, or as torch's
# flags say (TF32 convolutions on NVIDIA by default).
PRECISIONS: tuple[str, ...] = ("float32", "perturbed", "flags")


@dataclass(frozen=True)
class Variant:
    """How the regulariser's μ-gradient is taken without a double backward. The default is
    what ``regulariser_grad: finite_difference`` runs; the others are there to be measured
    (`benchmarks/regulariser_grad_variants.py`): a `VariationalLaplace` takes another one as
    its ``finite_difference`` attribute."""

    scheme: str = "forward"
    step: str = "balanced"
    precision: str = "float32"

    def __post_init__(self) -> None:
        for name, accepted in (("scheme", SCHEMES), ("step", STEPS), ("precision", PRECISIONS)):
            value = getattr(self, name)
            if value not in accepted:
                raise ValueError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")
        if self.scheme == "forward_over_reverse" and self.step != "balanced":
            raise ValueError("forward_over_reverse takes no step: leave step='balanced'")

    def passes(self) -> AbstractContextManager[None]:
        """The arithmetic of the whole loss (the first pass and the perturbed ones)."""
        return tf32(False) if self.precision == "float32" else nullcontext()

    def perturbed(self) -> AbstractContextManager[None]:
        """The arithmetic of the perturbed passes."""
        return tf32(False) if self.precision != "flags" else nullcontext()


def forward_epsilon(model: nn.Module, params: Sequence[Tensor]) -> float:
    """The machine epsilon of the arithmetic the forward really runs in.

    Autocast's dtype where it is on, else the weights'; but float32 on CUDA (or under
    `precision.EmulatedTF32`) runs in TF32 where torch allows it: convolutions by default
    (`precision.tf32_convolutions`), matrix products where set (`precision.tf32_matmuls`).
    """
    device_type = params[0].device.type
    if torch.is_autocast_enabled(device_type):
        return torch.finfo(torch.get_autocast_dtype(device_type)).eps
    dtype = params[0].dtype
    if dtype == torch.float32 and (device_type == "cuda" or emulating_tf32()):
        convolves = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
        if tf32_matmuls() or (convolves and tf32_convolutions()):
            return TF32_EPSILON
    return torch.finfo(dtype).eps


def step_size(v_norm: Tensor, epsilon: float, exponent: float = 0.5) -> Tensor:
    """h = √ε / ‖v‖, ε the machine epsilon of the forward's arithmetic (`forward_epsilon`);
    ε^``exponent`` in general (a central difference balances at ∛ε).

    The step h·v then has length √ε (1.5e-8 in float64, 3.5e-4 in float32, 0.031 in TF32,
    0.088 in bfloat16): the classic balance of a forward difference, whose truncation error
    grows with the step and whose rounding error with ε divided by it. Scaling the step by
    ‖μ‖ instead, as for one scalar variable, was measured worse on a BatchNorm ResNet-20
    (`benchmarks/finite_difference_accuracy.py`), where the normalisation is curved along v.
    A 0-d tensor: choosing h never waits for the device.
    """
    return math.pow(epsilon, exponent) / v_norm.clamp_min(_NORM_FLOOR)


class RngReplay:
    """The global RNG states before a forward, to replay its random draws (dropout) once."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def replayed(self) -> Iterator[None]:
        """Inside: the RNG as it was at capture. After: as it was on entry."""
        cpu_now = torch.get_rng_state()
        cuda_now = torch.cuda.get_rng_state(self.device) if self.cuda is not None else None
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:
            torch.set_rng_state(cpu_now)
            if cuda_now is not None:
                torch.cuda.set_rng_state(cuda_now, self.device)


_MASKED = (nn.ReLU, nn.LeakyReLU)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d)


class KinkPattern:
    """Record which side of each kink the first forward was on; replay the perturbed one there.

    ReLU-type modules keep their mask (x > 0) and become linear maps through it; max-pools
    keep the indices they chose and gather the perturbed input there.
    """

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules() if isinstance(m, _MASKED + _POOLS)]
        self._saved: dict[int, Tensor] = {}

    @contextmanager
    def recording(self) -> Iterator[None]:
        with _hooks(self.modules, self._record):
            yield

    @contextmanager
    def replaying(self) -> Iterator[None]:
        try:
            with _hooks(self.modules, self._replay, before=self._keep_inplace_input):
                yield
        finally:
            self._saved.clear()  # nothing of a step is kept until the next

    def _record(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if isinstance(module, _POOLS):
            _, indices = _pool_with_indices(module, inputs[0].detach())
            self._saved[id(module)] = indices
        else:  # the output's sign is the input's, also for an in-place ReLU
            self._saved[id(module)] = output.detach() > 0

    def _keep_inplace_input(
        self, module: nn.Module, inputs: tuple[Tensor, ...]
    ) -> tuple[Tensor, ...] | None:
        if getattr(module, "inplace", False):
            return (inputs[0].clone(), *inputs[1:])
        return None

    def _replay(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        x, saved = inputs[0], self._saved[id(module)]
        if isinstance(module, _POOLS):  # (N, C, *spatial): indices into the flat spatial dims
            picked = x.flatten(start_dim=2).gather(2, saved.flatten(start_dim=2))
            return picked.view_as(output)
        if isinstance(module, nn.LeakyReLU):
            return torch.where(saved, x, module.negative_slope * x)
        return x * saved


def _pool_with_indices(module: nn.MaxPool1d | nn.MaxPool2d, x: Tensor) -> tuple[Tensor, Tensor]:
    pool: Callable[..., tuple[Tensor, Tensor]]
    pool = F.max_pool1d if isinstance(module, nn.MaxPool1d) else F.max_pool2d
    return pool(
        x,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        ceil_mode=module.ceil_mode,
        return_indices=True,
    )


@contextmanager
def _hooks(
    modules: Sequence[nn.Module],
    after: Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor | None],
    before: Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor, ...] | None] | None = None,
) -> Iterator[None]:
    handles = [m.register_forward_hook(after) for m in modules]
    if before is not None:
        handles += [m.register_forward_pre_hook(before) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def nll_and_score(logits: Tensor, y: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The mean NLL of the true labels ``y`` and S = Σ_i log p(label_i|x_i), from one
    log-softmax in float32 or better."""
    log_probs = torch.log_softmax(at_least_fp32(logits), dim=-1)
    nll = -log_probs.gather(1, y[:, None]).mean()
    return nll, log_probs.gather(1, labels[:, None]).sum()


def objective_gradient(
    model: nn.Module,
    names: Sequence[str],
    params: Sequence[Tensor],
    score_gradient: Tensor,
    variance: Tensor,
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    rng: RngReplay,
    kinks: KinkPattern,
    variant: Variant = Variant(),
) -> Tensor:
    """∇NLL + ∇R for μ, flat: ∇[NLL + S/(B·h)] at μ + h·v, minus g̃/(B·h) (``variant``:
    another scheme, step or arithmetic).

    ``score_gradient`` is g̃ = ∇S(μ), flat; ``variance`` σ² (flat, or one shared 0-d value);
    ``y`` the true labels of the NLL, ``labels`` the ones S was taken with.
    """
    vector = variance * score_gradient
    batch = x.shape[0]
    with variant.perturbed():
        if variant.scheme == "forward_over_reverse":
            nll_gradient, product = _forward_over_reverse(
                model, names, params, vector, x, y, labels, rng
            )
            return nll_gradient + product.to(nll_gradient.dtype) / batch
        central = variant.scheme == "central"
        if variant.step == "method_scale":
            h = torch.full((), 1.0 / batch, dtype=vector.dtype, device=vector.device)
        else:
            epsilon = forward_epsilon(model, params)
            h = step_size(torch.linalg.vector_norm(vector), epsilon, 1 / 3 if central else 0.5)
        step = h * vector
        with kinks.replaying():
            if not central:
                scale = 1.0 / (batch * h)
                moved = _perturbed_gradient(model, names, params, step, x, y, labels, rng, scale)
                return moved.to(score_gradient.dtype) - scale * score_gradient
            # (∇S(μ + hv) − ∇S(μ − hv)) / 2h, and the NLL's gradient as the mean of the two
            scale = 1.0 / (2 * batch * h)
            ahead = _perturbed_gradient(model, names, params, step, x, y, labels, rng, scale, 0.5)
            behind = _perturbed_gradient(
                model, names, params, -step, x, y, labels, rng, -scale, 0.5
            )
            return (ahead + behind).to(score_gradient.dtype)


def _perturbed_gradient(
    model: nn.Module,
    names: Sequence[str],
    params: Sequence[Tensor],
    step: Tensor,
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    rng: RngReplay,
    score_weight: Tensor,
    nll_weight: float = 1.0,
) -> Tensor:
    """∇[nll_weight·NLL + score_weight·S] at μ + step, flat, in the first pass's random
    draws (and kinks, replayed by the caller), the running statistics left untouched."""
    pieces = step.split([p.numel() for p in params])
    with torch.no_grad():
        moved = {
            name: (p + piece.view(p.shape).to(p.dtype)).requires_grad_(True)
            for name, p, piece in zip(names, params, pieces, strict=True)
        }
        buffers = {name: b.clone() for name, b in model.named_buffers()}
    with torch.enable_grad():
        with rng.replayed():
            logits = functional_call(model, {**buffers, **moved}, (x,))
        nll, own_score = nll_and_score(logits, y, labels)
        grads = torch.autograd.grad(
            nll_weight * nll + score_weight * own_score, list(moved.values())
        )
    return torch.cat([g.reshape(-1) for g in grads])


def _forward_over_reverse(
    model: nn.Module,
    names: Sequence[str],
    params: Sequence[Tensor],
    vector: Tensor,
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    rng: RngReplay,
) -> tuple[Tensor, Tensor]:
    """(∇NLL, H_S·v) at μ, flat: one forward carrying the tangent v (forward-mode AD), the
    backward of S through it, whose tangent is H_S·v, and a plain backward of the NLL on the
    same graph once the tangents are gone."""
    pieces = vector.split([p.numel() for p in params])
    leaves = [p.detach().requires_grad_(True) for p in params]
    with torch.no_grad():
        buffers = {name: b.clone() for name, b in model.named_buffers()}
    with torch.enable_grad():
        with fwAD.dual_level():
            duals = {
                name: fwAD.make_dual(leaf, piece.view(leaf.shape).to(leaf.dtype))
                for name, leaf, piece in zip(names, leaves, pieces, strict=True)
            }
            with rng.replayed():
                logits = functional_call(model, {**buffers, **duals}, (x,))
            nll, own_score = nll_and_score(logits, y, labels)
            score_grads = torch.autograd.grad(own_score, leaves, retain_graph=True)
            products = [
                _tangent_or_zeros(grad, leaf)
                for grad, leaf in zip(score_grads, leaves, strict=True)
            ]
        nll_grads = torch.autograd.grad(nll, leaves)
    flat_products = torch.cat([p.reshape(-1) for p in products])
    return torch.cat([g.reshape(-1) for g in nll_grads]), flat_products


def _tangent_or_zeros(grad: Tensor, like: Tensor) -> Tensor:
    tangent = fwAD.unpack_dual(grad).tangent
    return torch.zeros_like(like) if tangent is None else tangent.detach()
