"""Independent float64 reference computations, written as plainly as possible.

Nothing here shares code with gradreg's estimators: per-example gradients come from one
autograd call per (example, class) on single-example forwards, or from torch.func Jacobians.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev


def tiny_mlp(seed: int = 0, n_in: int = 5, n_hidden: int = 7, n_classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(n_in, n_hidden),
        nn.Tanh(),
        nn.Linear(n_hidden, n_hidden),
        nn.ReLU(inplace=True),
        nn.Linear(n_hidden, n_classes),
    ).double()


def tiny_cnn2d(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(3, 4, 2, stride=2, bias=False),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3),
    ).double()


def tiny_cnn1d(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(1, 3, 3, padding=1, dilation=1),
        nn.Tanh(),
        nn.Conv1d(3, 2, 3, stride=2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(2 * 3, 4),
    ).double()


class TokenModel(nn.Module):
    """A Linear applied over a token axis: the per-example gradient sums over tokens."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(3, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.embed(x)).mean(1))


def inputs_for(model: nn.Module, batch: int, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d))
    if isinstance(model, TokenModel):
        shape = (batch, 5, 3)
    elif isinstance(first, nn.Conv2d):
        shape = (batch, 2, 4, 4)
    elif isinstance(first, nn.Conv1d):
        shape = (batch, 1, 7)
    else:
        shape = (batch, first.in_features)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def brute_force_fisher(model: nn.Module, x: Tensor, labels: Tensor | None = None) -> list[Tensor]:
    """Σ_i Σ_c p_ic g_ic² (labels None) or Σ_i g_i(y_i)², one example at a time."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(x.shape[0]):
        log_probs = torch.log_softmax(model(x[i : i + 1]), dim=-1)[0]
        classes = range(log_probs.shape[0]) if labels is None else [int(labels[i])]
        for c in classes:
            grads = torch.autograd.grad(log_probs[c], params, retain_graph=True)
            weight = log_probs[c].exp().detach() if labels is None else 1.0
            total = [t + weight * g.square() for t, g in zip(total, grads, strict=True)]
    return total


def squared_batch_gradient(model: nn.Module, x: Tensor, labels: Tensor) -> list[Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    log_probs = torch.log_softmax(model(x), dim=-1)
    grads = torch.autograd.grad(log_probs[torch.arange(len(labels)), labels].sum(), params)
    return [g.square() for g in grads]


def jacobian_fisher(
    model: nn.Module, params: dict[str, Tensor], x: Tensor, labels: Tensor | None = None
) -> dict[str, Tensor]:
    """Differentiable exact (labels None) or per-example (labels given) Fisher via jacrev.

    The whole batch goes through one forward, so it also serves batch-coupled models.
    """

    def log_probs(p: dict[str, Tensor]) -> Tensor:
        return torch.log_softmax(functional_call(model, p, (x,)), dim=-1)

    jac = jacrev(log_probs)(params)  # name -> (B, C, *shape)
    probs = log_probs(params).exp()
    out = {}
    for name, j in jac.items():
        extra = (1,) * (j.dim() - 2)
        if labels is None:
            out[name] = (probs.reshape(*probs.shape, *extra) * j.square()).sum((0, 1))
        else:
            picked = j[torch.arange(len(labels)), labels]
            out[name] = picked.square().sum(0)
    return out


def max_abs_diff(a: list[Tensor], b: list[Tensor]) -> float:
    return max(float((u - v).detach().abs().max()) for u, v in zip(a, b, strict=True))
