"""The finite-difference μ-gradient of the VL objective against autograd's double backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from gradreg import TrainConfig, fit, posterior
from gradreg.curvature.finite_difference import (
    TF32_EPSILON,
    KinkPattern,
    RngReplay,
    Variant,
    forward_epsilon,
    nll_and_score,
    objective_gradient,
    step_size,
)
from gradreg.curvature.precision import EmulatedTF32, tf32_convolutions
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
    variant: Variant | None = None,
):
    """The same posterior, batch and variances for every path and precision (made in fp32)."""
    torch.manual_seed(0)
    if model is None:
        model = build_model(model_name, SHAPES[model_name], 5, **OPTIONS.get(model_name, {}))
    model = model.to(dtype)
    settings = {"noise_scale": 0.05} if variance == "uniform" else {}
    post = posterior(model, f"vl-{variance}", n_data=500, regulariser_grad=path, **settings)
    if variant is not None:
        post.finite_difference = variant
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
    assert float(step_size(v_norm, 2**-51, 1 / 3) * v_norm) == pytest.approx(2**-17)  # central
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


CENTRAL, FORWARD_OVER_REVERSE = Variant("central"), Variant("forward_over_reverse")


@pytest.mark.parametrize("model_name", ["mlp", "cnn", "resnet20"])
@pytest.mark.parametrize(("variant", "tolerance"), [(CENTRAL, 1e-6), (FORWARD_OVER_REVERSE, 1e-12)])
def test_the_other_schemes_match_autograd_in_float64(model_name, variant, tolerance):
    # central: error O(h²) at a step of ∛ε; forward-over-reverse: exact, no kinks to freeze
    autograd_terms, reference = step(*make(model_name, "diagonal", "autograd"))
    terms, gradient = step(*make(model_name, "diagonal", "finite_difference", variant=variant))
    cosine, relative = agreement(reference, gradient)
    assert relative < tolerance, (cosine, relative)
    assert torch.equal(terms.loss.detach(), autograd_terms.loss.detach())


@pytest.mark.parametrize(
    ("model_name", "variant", "tolerance"),
    [
        ("cnn", CENTRAL, 2e-4),  # 20x closer than the forward difference (7e-4)
        ("resnet20", CENTRAL, 3e-2),  # no closer: BatchNorm is curved along v (both 6e-3)
        ("cnn", FORWARD_OVER_REVERSE, 1e-5),  # as autograd in float32 (2e-7)
        ("resnet20", FORWARD_OVER_REVERSE, 1e-5),  # (1.5e-6)
    ],
)
def test_the_other_schemes_in_float32(model_name, variant, tolerance):
    _, reference = step(*make(model_name, "diagonal", "autograd"))
    _, gradient = step(
        *make(model_name, "diagonal", "finite_difference", torch.float32, variant=variant)
    )
    cosine, relative = agreement(reference, gradient)
    assert relative < tolerance, (cosine, relative)


@pytest.mark.parametrize("variant", [CENTRAL, FORWARD_OVER_REVERSE])
def test_the_other_schemes_replay_dropout_and_leave_batchnorm_and_the_rng_alone(variant):
    def with_dropout() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 5))

    _, reference = step(*make("mlp", "uniform", "autograd", model=with_dropout()))
    _, gradient = step(
        *make("mlp", "uniform", "finite_difference", model=with_dropout(), variant=variant)
    )
    assert agreement(reference, gradient)[1] < 1e-6
    post_a, x, y = make("resnet20", "uniform", "autograd")
    post_f, _, _ = make("resnet20", "uniform", "finite_difference", variant=variant)
    step(post_a, x, y)
    rng_after_autograd = torch.get_rng_state()
    step(post_f, x, y)
    assert torch.equal(torch.get_rng_state(), rng_after_autograd)
    buffers_a = dict(post_a.named_buffers())
    for name, value in post_f.named_buffers():  # one update each, by the step's own forward
        assert torch.equal(value, buffers_a[name]), name


def test_the_method_scale_step_moves_the_weights_by_sigma_squared_score_over_b():
    """h = 1/B: the gradient is ∇[NLL + S](μ + σ²⊙g̃/B) − g̃, computed here by hand."""
    torch.manual_seed(0)
    model = build_model("mlp", SHAPES["mlp"], 5, **OPTIONS["mlp"]).double()
    names, params = zip(*model.named_parameters(), strict=True)
    x, y = torch.randn(16, 12, dtype=torch.float64), torch.randint(0, 5, (16,))
    labels = torch.randint(0, 5, (16,))
    variance = torch.rand(sum(p.numel() for p in params), dtype=torch.float64) * 1e-2
    kinks = KinkPattern(model)
    with kinks.recording():
        _, score = nll_and_score(model(x), y, labels)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(score, params)])
    gradient = objective_gradient(
        model,
        names,
        params,
        g,
        variance,
        x,
        y,
        labels,
        RngReplay(x.device),
        kinks,
        Variant(step="method_scale"),
    )
    pieces = (variance * g / 16).split([p.numel() for p in params])
    moved = {
        n: (p + d.view(p.shape)).detach().requires_grad_()
        for n, p, d in zip(names, params, pieces, strict=True)
    }
    nll, score = nll_and_score(functional_call(model, moved, (x,)), y, labels)
    by_hand = torch.autograd.grad(nll + score, list(moved.values()))
    expected = torch.cat([t.reshape(-1) for t in by_hand]) - g
    assert torch.allclose(gradient, expected, rtol=1e-12, atol=1e-12)


class ConvolutionLog(TorchDispatchMode):
    """Whether torch's flags allowed TF32 at each forward or backward convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.tf32: list[bool] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (
            torch.ops.aten.convolution.default,
            torch.ops.aten.convolution_backward.default,
        ):
            self.tf32.append(tf32_convolutions())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    ("precision", "expected"),
    [("float32", [False] * 4), ("perturbed", [True, True, False, False]), ("flags", [True] * 4)],
)
def test_each_pass_runs_in_the_arithmetic_its_variant_names(precision, expected):
    # one convolution: the first pass's forward and backward, then the perturbed pass's
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    post, x, y = make("cnn", "uniform", "finite_difference", torch.float32, model=model)
    post.finite_difference = Variant(precision=precision)
    log = ConvolutionLog()
    with log:
        step(post, x[:, :1, :4, :4], y % 3)
    assert log.tf32 == expected
    assert tf32_convolutions()  # and torch's flags are as they were


def test_under_tf32_the_float32_passes_are_accurate_and_auto_takes_them():
    """TF32's rounding emulated: the difference in TF32 (what the path did before issue 29)
    is far off; in float32 passes it is as close as in float32, and `auto` takes it."""
    _, reference = step(*make("cnn", "diagonal", "autograd"))
    errors = {}
    with EmulatedTF32():
        for precision in ("float32", "flags"):
            variant = Variant(precision=precision)
            post, x, y = make(
                "cnn", "diagonal", "finite_difference", torch.float32, variant=variant
            )
            errors[precision] = agreement(reference, step(post, x, y)[1])[1]
        auto, _, _ = make("cnn", "diagonal", "auto", torch.float32)
        assert auto.gradient_path(torch.device("cuda")) == "finite_difference"
        auto.finite_difference = Variant(precision="flags")
        assert auto.gradient_path(torch.device("cuda")) == "autograd"
    assert errors["float32"] < 2e-3 < 2e-2 < errors["flags"], errors


def test_variants_refuse_what_they_do_not_know():
    with pytest.raises(ValueError, match="unknown scheme 'backward'; accepted: forward, central"):
        Variant("backward")
    with pytest.raises(ValueError, match="unknown precision 'tf32'; accepted: float32"):
        Variant(precision="tf32")
    with pytest.raises(ValueError, match="forward_over_reverse takes no step"):
        Variant("forward_over_reverse", step="method_scale")
