"""Every Fisher estimator against brute-force float64 references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradreg import fisher_diagonal
from tests.helpers.oracles import (
    TokenModel,
    brute_force_fisher,
    inputs_for,
    jacobian_fisher,
    max_abs_diff,
    squared_batch_gradient,
    tiny_cnn1d,
    tiny_cnn2d,
    tiny_mlp,
)

MODELS = {
    "mlp": tiny_mlp,
    "cnn2d": tiny_cnn2d,
    "cnn1d": tiny_cnn1d,
    "tokens": TokenModel,
}


def _model_and_inputs(kind: str, batch: int = 5):
    model = MODELS[kind]().double()
    return model, inputs_for(model, batch)


def _labels(model, x, seed: int = 3) -> torch.Tensor:
    n_classes = model(x[:1]).shape[1]
    return torch.randint(0, n_classes, (x.shape[0],), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", MODELS)
def test_exact_matches_brute_force(kind):
    model, x = _model_and_inputs(kind)
    got = fisher_diagonal(model, x, estimator="exact")
    assert max_abs_diff(got, brute_force_fisher(model, x)) < 1e-12


@pytest.mark.parametrize("kind", MODELS)
def test_per_example_with_labels_matches_brute_force(kind):
    model, x = _model_and_inputs(kind)
    labels = _labels(model, x)
    got = fisher_diagonal(model, x, estimator="per_example", labels=labels)
    assert max_abs_diff(got, brute_force_fisher(model, x, labels)) < 1e-12


@pytest.mark.parametrize("kind", ["mlp", "cnn2d"])
def test_sampled_with_labels_is_squared_batch_gradient(kind):
    model, x = _model_and_inputs(kind)
    labels = _labels(model, x)
    got = fisher_diagonal(model, x, estimator="sampled", labels=labels)
    assert max_abs_diff(got, squared_batch_gradient(model, x, labels)) < 1e-12


def _mean_and_stderr(model, x, estimator: str, draws: int):
    g = torch.Generator().manual_seed(1234)
    samples = [
        torch.cat(
            [f.flatten() for f in fisher_diagonal(model, x, estimator=estimator, generator=g)]
        )
        for _ in range(draws)
    ]
    stacked = torch.stack(samples)
    return stacked.mean(0), stacked.std(0) / draws**0.5


@pytest.mark.parametrize("estimator", ["sampled", "per_example"])
def test_model_sampled_labels_are_unbiased_for_exact(estimator):
    model = tiny_mlp(n_in=3, n_hidden=4)
    x = inputs_for(model, 4)
    exact = torch.cat([f.flatten() for f in fisher_diagonal(model, x, estimator="exact")])
    mean, stderr = _mean_and_stderr(model, x, estimator, draws=3000)
    z = (mean - exact).abs() / (stderr + 1e-12)
    # 63 entries: a 5-sigma deviation anywhere would be a real bias, not bad luck.
    assert float(z.max()) < 5.0, float(z.max().detach())
    # ... and the test has power: a 25% scale error would be caught.
    assert float(((1.25 * exact - mean).abs() / (stderr + 1e-12)).max()) > 5.0


class BatchNormNet(nn.Module):
    def __init__(self, track_running_stats: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        norm = nn.BatchNorm1d(4, track_running_stats=track_running_stats)
        self.body = nn.Sequential(nn.Linear(3, 4), norm, nn.Tanh(), nn.Linear(4, 3))

    def forward(self, x):
        return self.body(x)


def test_exact_with_batchnorm_matches_batch_coupled_jacobian():
    model = BatchNormNet().double().train()
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = fisher_diagonal(model, x, estimator="exact")
    params = {n: p.detach() for n, p in model.named_parameters()}
    # jacrev cannot update running statistics; batch statistics are the same without them.
    reference = jacobian_fisher(BatchNormNet(track_running_stats=False).double(), params, x)
    assert max_abs_diff(got, list(reference.values())) < 1e-11


def test_sampled_with_batchnorm_is_unbiased_for_the_coupled_fisher():
    model = BatchNormNet().double().train()
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = torch.cat([f.flatten() for f in fisher_diagonal(model, x, estimator="exact")])
    mean, stderr = _mean_and_stderr(model, x, "sampled", draws=2000)
    assert float(((mean - exact).abs() / (stderr + 1e-12)).max()) < 5.0


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_per_example_refuses_batchnorm_and_names_the_layer(mode):
    model = BatchNormNet().double()
    model.train(mode == "train")
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"body\.1.*BatchNorm1d.*fisher='sampled'"):
        fisher_diagonal(model, x, estimator="per_example")


def test_grouped_conv_falls_back_to_brute_force_for_exact_and_is_refused_by_per_example():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(16, 3)).double()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    assert max_abs_diff(fisher_diagonal(model, x), brute_force_fisher(model, x)) < 1e-12
    with pytest.raises(ValueError, match=r"'0'.*groups=2"):
        fisher_diagonal(model, x, estimator="per_example")


class SharedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)

    def forward(self, x):
        return self.layer(torch.tanh(self.layer(x)))


def test_shared_weights_are_refused_by_per_example_but_exact_is_right():
    model = SharedLayer().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'layer' ran twice"):
        fisher_diagonal(model, x, estimator="per_example")
    with pytest.raises(ValueError, match=r"ran twice"):
        fisher_diagonal(model, x, estimator="exact")
    got = fisher_diagonal(model, x, estimator="sampled", labels=torch.tensor([0, 1, 2, 0]))
    assert max_abs_diff(got, squared_batch_gradient(model, x, torch.tensor([0, 1, 2, 0]))) < 1e-12


def test_frozen_parameters_are_left_out():
    model = tiny_mlp()
    model[0].weight.requires_grad_(False)
    x = inputs_for(model, 4)
    got = fisher_diagonal(model, x, estimator="exact")
    assert [f.shape for f in got] == [p.shape for p in model.parameters() if p.requires_grad]
    assert max_abs_diff(got, brute_force_fisher(model, x)) < 1e-12


def test_generator_makes_sampling_reproducible_and_hooks_are_removed():
    model = tiny_mlp()
    model.eval()
    x = inputs_for(model, 8)
    a = fisher_diagonal(
        model, x, estimator="per_example", generator=torch.Generator().manual_seed(5)
    )
    b = fisher_diagonal(
        model, x, estimator="per_example", generator=torch.Generator().manual_seed(5)
    )
    assert max_abs_diff(a, b) == 0.0
    assert not model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_create_graph_keeps_the_estimate_differentiable():
    model = tiny_mlp()
    x = inputs_for(model, 4)
    fisher = fisher_diagonal(model, x, estimator="exact", create_graph=True)
    assert all(f.requires_grad for f in fisher)
    assert not any(f.requires_grad for f in fisher_diagonal(model, x, estimator="exact"))


def test_bad_inputs_get_clear_errors():
    model = tiny_mlp()
    x = inputs_for(model, 4)
    with pytest.raises(
        ValueError, match=r"unknown Fisher estimator 'diag'.*exact, sampled, per_example"
    ):
        fisher_diagonal(model, x, estimator="diag")
    with pytest.raises(ValueError, match=r"contain 3, outside the model's classes 0\.\.2"):
        fisher_diagonal(model, x, estimator="per_example", labels=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"contain -1"):
        fisher_diagonal(model, x, estimator="sampled", labels=torch.tensor([0, -1, 2, 1]))
    with pytest.raises(TypeError, match=r"integer tensor.*float"):
        fisher_diagonal(model, x, estimator="sampled", labels=torch.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        fisher_diagonal(model, x, estimator="sampled", labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"no trainable parameters"):
        fisher_diagonal(nn.Identity(), x)
    with pytest.raises(ValueError, match=r"logits of shape \(batch, n_classes\)"):
        fisher_diagonal(nn.Sequential(nn.Linear(5, 1)).double(), x)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("estimator", ["exact", "per_example", "sampled"])
def test_total_fast_path_equals_the_sum_of_the_full_estimate_and_its_gradient(kind, estimator):
    from gradreg.curvature.fisher import FisherPass

    model, x = _model_and_inputs(kind)
    labels = None if estimator == "exact" else _labels(model, x)
    fisher_pass = FisherPass(model, estimator)
    fisher_pass.forward(x)
    full = fisher_pass.estimate_flat(labels, create_graph=True).sum()
    total = fisher_pass.estimate_total(labels, create_graph=True)
    assert torch.allclose(total, full, rtol=1e-12)
    params = list(model.parameters())
    grad_full = torch.autograd.grad(full, params, retain_graph=True)
    grad_total = torch.autograd.grad(total, params)
    assert max_abs_diff(list(grad_full), list(grad_total)) < 1e-10


def test_per_example_names_every_layer_in_its_way():
    """Each BatchNorm in training mode, then every layer without a rule (grouped by type), then
    each layer whose configuration its rule cannot do: all named, in one message."""

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(6)
            self.linear = nn.Linear(6, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.linear(self.norm(x))

    model = nn.Sequential(
        nn.Conv1d(1, 2, 3, padding=1, groups=1),
        nn.BatchNorm1d(2),
        nn.Conv1d(2, 2, 3, padding=1, groups=2),
        nn.Flatten(),
        nn.Linear(12, 6),
        Residual(),
        Residual(),
        nn.LayerNorm(6),
        nn.Linear(6, 3),
    ).double()
    x = torch.randn(4, 1, 6, dtype=torch.float64)
    expected = (
        "fisher='per_example' cannot handle this model: layer '1' (BatchNorm1d) normalises "
        "with batch statistics, which couple the examples, so per-example gradients do not "
        "exist; layers '5.norm', '6.norm' and '7' (LayerNorm) have parameters but no "
        "per-example rule; layer '2' uses groups=2, padding=(1,), padding_mode='zeros'; the "
        "per-example rule needs groups=1, integer padding and padding_mode='zeros'. Use "
        "fisher='sampled', which works for any architecture."
    )
    with pytest.raises(ValueError) as error:
        fisher_diagonal(model, x, estimator="per_example")
    assert str(error.value) == expected
    model.eval()  # at its running statistics BatchNorm is a layer without a rule
    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm1d\) has parameters but no"):
        fisher_diagonal(model, x, estimator="per_example")
