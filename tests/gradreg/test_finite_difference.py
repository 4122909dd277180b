"""The finite-difference μ-gradient of the VL objective against autograd's double backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradreg import TrainConfig, fit, posterior
from gradreg.curvature.finite_difference import (
    TF32_EPSILON,
    KinkPattern,
    forward_epsilon,
    step_size,
)
from gradreg.methods import resolve_regulariser_grad
from gradreg.models import build_model

SHAPES = {"mlp": (12,), "cnn": (2, 8, 8), "resnet20": (3, 8, 8)}
OPTIONS = {"mlp": {"hidden": [16, 16]}, "cnn": {"channels": [4, 6], "hidden": 8}}
OPTIONS["resnet20"] = {"width": 4}


def make(
    model_name: str,
    variance: str,
    path: str,
    dtype: torch.dtype = torch.float64,
    model: nn.Module | None = None,
):
    """The same posterior, batch and variances for every path and precision (made in fp32)."""
    torch.manual_seed(0)
    if model is None:
        model = build_model(model_name, SHAPES[model_name], 5, **OPTIONS.get(model_name, {}))
    model = model.to(dtype)
    settings = {"noise_scale": 0.05} if variance == "uniform" else {}
    post = posterior(model, f"vl-{variance}", n_data=500, regulariser_grad=path, **settings)
    if variance == "diagonal":  # varied σ², so that v = σ² ⊙ g̃ is not parallel to g̃
        log_var = torch.empty(post.family.log_variance.shape).uniform_(-8, -4)
        with torch.no_grad():
            post.family.log_variance.copy_(log_var)
    x = torch.randn(16, *SHAPES.get(model_name, (12,))).to(dtype)
    y = torch.randint(0, 5, (16,))
    return post, x, y


def step(post, x, y, autocast: bool = False):
    """One loss and backward; returns the terms and every gradient, flat, in float64."""
    torch.manual_seed(7)  # dropout draws, where a model has them
    context = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with context:
        terms = post.loss(x, y, generator=torch.Generator().manual_seed(3))
    terms.loss.backward()
    grads = torch.cat([p.grad.reshape(-1) for p in post.parameters() if p.grad is not None])
    return terms, grads.double()


def agreement(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    cosine = float(torch.nn.functional.cosine_similarity(reference, other, dim=0))
    return cosine, float((reference - other).norm() / reference.norm())


@pytest.mark.parametrize("model_name", ["mlp", "cnn", "resnet20"])
@pytest.mark.parametrize("variance", ["uniform", "diagonal"])
def test_float64_matches_autograd_with_the_same_loss_values(model_name, variance):
    autograd_terms, reference = step(*make(model_name, variance, "autograd"))
    fd_terms, gradient = step(*make(model_name, variance, "finite_difference"))
    cosine, relative = agreement(reference, gradient)
    # h = √ε/‖v‖ in float64: a step of length 1.5e-8
    assert cosine > 0.9999 and relative < 1e-4, (cosine, relative)
    for name in ("loss", "nll", "sqgrad", "kl"):
        assert torch.equal(getattr(fd_terms, name).detach(), getattr(autograd_terms, name).detach())


@pytest.mark.parametrize(
    ("model_name", "tolerance"), [("mlp", 2e-3), ("cnn", 2e-3), ("resnet20", 3e-2)]
)
def test_float32_stays_close_to_the_float64_gradient(model_name, tolerance):
    _, reference = step(*make(model_name, "diagonal", "autograd"))
    _, gradient = step(*make(model_name, "diagonal", "finite_difference", torch.float32))
    cosine, relative = agreement(reference, gradient)
    assert relative < tolerance, (cosine, relative)


def test_bf16_autocast_is_close_on_an_mlp_and_auto_keeps_autograd_there():
    _, reference = step(*make("mlp", "uniform", "autograd"))
    _, autograd_bf16 = step(*make("mlp", "uniform", "autograd", torch.float32), autocast=True)
    _, fd_bf16 = step(*make("mlp", "uniform", "finite_difference", torch.float32), autocast=True)
    autograd_cosine, _ = agreement(reference, autograd_bf16)
    fd_cosine, _ = agreement(reference, fd_bf16)
    assert autograd_cosine > 0.99 and fd_cosine > 0.99, (autograd_cosine, fd_cosine)
    # auto takes finite differences on CUDA only outside autocast: bf16's are noisier.
    assert resolve_regulariser_grad("auto", "sampled", "cuda") == "finite_difference"
    assert resolve_regulariser_grad("auto", "sampled", "cuda", low_precision=True) == "autograd"
    assert resolve_regulariser_grad("auto", "sampled", "cpu") == "autograd"
    assert resolve_regulariser_grad("auto", "per_example", "cuda") == "autograd"
    assert resolve_regulariser_grad("finite_difference", "sampled", "cpu") == "finite_difference"


def test_the_step_has_length_root_epsilon_of_the_forward_precision():
    v_norm = torch.tensor(4.0)
    for epsilon, length in ((2**-52, 2**-26), (2**-23, 2**-11.5), (TF32_EPSILON, 2**-5)):
        assert float(step_size(v_norm, epsilon) * v_norm) == pytest.approx(length)
    model = build_model("cnn", (1, 8, 8), 3)
    params = list(model.parameters())
    assert forward_epsilon(model, params) == 2**-23
    assert forward_epsilon(model.double(), list(model.parameters())) == 2**-52
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert forward_epsilon(model, params) == 2**-7


def test_batchnorm_statistics_and_the_rng_are_as_after_an_autograd_step():
    post_a, x, y = make("resnet20", "uniform", "autograd")
    post_f, _, _ = make("resnet20", "uniform", "finite_difference")
    weights_before = [p.detach().clone() for p in post_f.parameters()]
    step(post_a, x, y)
    rng_after_autograd = torch.get_rng_state()
    step(post_f, x, y)
    assert torch.equal(torch.get_rng_state(), rng_after_autograd)
    buffers_a, buffers_f = dict(post_a.named_buffers()), dict(post_f.named_buffers())
    for name, value in buffers_a.items():  # one update each, by the step's own forward
        assert torch.equal(buffers_f[name], value), name
    assert int(buffers_f["model.1.num_batches_tracked"]) == 1
    for before, after in zip(weights_before, post_f.parameters(), strict=True):
        assert torch.equal(before, after)  # the perturbation never touched the weights


def test_dropout_masks_are_replayed_in_the_perturbed_pass():
    def with_dropout() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 5))

    _, reference = step(*make("mlp", "uniform", "autograd", model=with_dropout()))
    _, gradient = step(*make("mlp", "uniform", "finite_difference", model=with_dropout()))
    cosine, relative = agreement(reference, gradient)
    assert cosine > 0.9999 and relative < 1e-4, (cosine, relative)


def test_kinks_are_replayed_where_the_first_forward_left_them():
    model = nn.Sequential(nn.ReLU(), nn.MaxPool1d(2), nn.LeakyReLU(0.1))
    kinks = KinkPattern(model)
    x = torch.tensor([[[1.0, -2.0, -3.0, 0.5]]])
    with kinks.recording():
        first = model(x)
    assert first.tolist() == [[[1.0, 0.5]]]
    moved = torch.tensor([[[-0.5, 4.0, 2.0, -1.0]]])  # every unit crosses its kink
    with kinks.replaying():
        replayed = model(moved)
    # ReLU keeps its mask (1, 0, 0, 1), the pool its choices (0 and 3), the leaky ReLU its
    # positive side (slope 1) for both units: not max(4, 0) nor 0.1 · (−1).
    assert replayed.tolist() == [[[-0.5, -1.0]]]
    assert model(moved).tolist() == [[[4.0, 2.0]]]  # and the hooks are gone afterwards


def test_finite_differences_need_the_sampled_estimator():
    model = build_model("mlp", (12,), 5)
    for fisher in ("per_example", "exact"):
        with pytest.raises(ValueError, match=f"needs fisher='sampled', not fisher='{fisher}'"):
            posterior(
                model, "vl-diagonal", n_data=10, fisher=fisher, regulariser_grad="finite_difference"
            )
        with pytest.raises(ValueError, match=f"needs fisher='sampled', not fisher='{fisher}'"):
            TrainConfig(method="vl", fisher=fisher, regulariser_grad="finite_difference")
    with pytest.raises(ValueError, match="unknown regulariser_grad 'fd'; accepted: auto, autograd"):
        TrainConfig(method="vl", regulariser_grad="fd")
    with pytest.raises(ValueError, match="method 'map' does not use regulariser_grad"):
        TrainConfig(method="map", regulariser_grad="autograd")


def test_compile_refuses_what_it_cannot_run():
    for method in ("vl", "laplace"):
        with pytest.raises(ValueError, match=f"compile=true does not fit method '{method}"):
            TrainConfig(method=method, compile=True)
    TrainConfig(method="map", compile=True)  # these it can
    TrainConfig(method="mcvi", compile=True)


def test_training_with_finite_differences_learns_and_resumes_alike():
    config = TrainConfig(
        dataset="iris",
        method="vl",
        variance="diagonal",
        regulariser_grad="finite_difference",
        epochs=12,
        batch_size=32,
        lr=1e-2,
        model_options={"hidden": [16]},
        n_samples=4,
    )
    states = []
    whole = fit(config, on_epoch=lambda report: states.append(report.state_dict()))
    assert whole.history[-1]["val_accuracy"] > 0.8
    resumed = fit(config, resume=states[5])
    assert resumed.history[-1]["train_loss"] == whole.history[-1]["train_loss"]


@pytest.mark.slow
def test_a_compiled_map_model_trains_as_it_does_eagerly():
    config = {"dataset": "iris", "method": "map", "epochs": 2, "model_options": {"hidden": [8]}}
    eager = fit(config).history
    compiled = fit({**config, "compile": True}).history
    for before, after in zip(eager, compiled, strict=True):
        assert after["train_loss"] == pytest.approx(before["train_loss"], rel=1e-5)
