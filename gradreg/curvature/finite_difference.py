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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from gradreg.curvature.layer_rules import at_least_fp32

_NORM_FLOOR = 1e-30
TF32_EPSILON = 2.0**-10  # TensorFloat-32 keeps 10 bits of mantissa


def forward_epsilon(model: nn.Module, params: Sequence[Tensor]) -> float:
    """The machine epsilon of the arithmetic the forward really runs in.

    Autocast's dtype where it is on, else the weights'; but float32 on CUDA runs in TF32
    where torch allows it: convolutions by default (``torch.backends.cudnn.allow_tf32``),
    matrix products when ``torch.backends.cuda.matmul.allow_tf32`` is set.
    """
    device_type = params[0].device.type
    if torch.is_autocast_enabled(device_type):
        return torch.finfo(torch.get_autocast_dtype(device_type)).eps
    dtype = params[0].dtype
    if dtype == torch.float32 and device_type == "cuda":
        convolves = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
        if torch.backends.cuda.matmul.allow_tf32 or (convolves and torch.backends.cudnn.allow_tf32):
            return TF32_EPSILON
    return torch.finfo(dtype).eps


def step_size(v_norm: Tensor, epsilon: float) -> Tensor:
    """h = √ε / ‖v‖, ε the machine epsilon of the forward's arithmetic (`forward_epsilon`).

    The step h·v then has length √ε (1.5e-8 in float64, 3.5e-4 in float32, 0.031 in TF32,
    0.088 in bfloat16): the classic balance of a forward difference, whose truncation error
    grows with the step and whose rounding error with ε divided by it. Scaling the step by
    ‖μ‖ instead, as for one scalar variable, was measured worse on a BatchNorm ResNet-20
    (`benchmarks/finite_difference_accuracy.py`), where the normalisation is curved along v.
    A 0-d tensor: choosing h never waits for the device.
    """
    return math.sqrt(epsilon) / v_norm.clamp_min(_NORM_FLOOR)


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
) -> Tensor:
    """∇NLL + ∇R for μ, flat: ∇[NLL + S/(B·h)] at μ + h·v, minus g̃/(B·h).

    ``score_gradient`` is g̃ = ∇S(μ), flat; ``variance`` σ² (flat, or one shared 0-d value);
    ``y`` the true labels of the NLL, ``labels`` the ones S was taken with.
    """
    vector = variance * score_gradient
    h = step_size(torch.linalg.vector_norm(vector), forward_epsilon(model, params))
    scale = 1.0 / (x.shape[0] * h)
    pieces = (h * vector).split([p.numel() for p in params])
    with torch.no_grad():
        moved = {
            name: (p + piece.view(p.shape).to(p.dtype)).requires_grad_(True)
            for name, p, piece in zip(names, params, pieces, strict=True)
        }
        buffers = {name: b.clone() for name, b in model.named_buffers()}
    with torch.enable_grad():
        with rng.replayed(), kinks.replaying():
            logits = functional_call(model, {**buffers, **moved}, (x,))
        nll, own_score = nll_and_score(logits, y, labels)
        grads = torch.autograd.grad(nll + scale * own_score, list(moved.values()))
    flat = torch.cat([g.reshape(-1) for g in grads]).to(score_gradient.dtype)
    return flat - scale * score_gradient
