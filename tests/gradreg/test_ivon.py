"""IVON (gradreg.posteriors.ivon): Algorithm 1 of Shen et al. (2024) step by step, its
posterior's samples, the prior it shares with every method, training, saving, the command
line, and the settings it refuses. The ivon-opt package as an oracle is in
test_external_oracles.py."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import gradreg
from gradreg.cli.main import main
from gradreg.comparison.runs import CompareSpec
from gradreg.config import TrainConfig
from gradreg.export import SavedPosterior
from gradreg.methods import DEFAULT_LR, METHODS
from gradreg.posteriors.gaussian import gaussian_kl
from gradreg.posteriors.ivon import IVON, IVONOptimiser
from gradreg.train import fit
from tests.helpers.oracles import inputs_for, tiny_mlp

N_DATA = 40
SMALL = {"dataset": "iris", "model_options": {"hidden": [8]}, "device": "cpu", "method": "ivon"}


def _batches(model: nn.Module, steps: int, size: int = 6) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(11)
    return [
        (inputs_for(model, size, seed=100 + k), torch.randint(0, 3, (size,), generator=generator))
        for k in range(steps)
    ]


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _reference(
    model: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    *,
    lr: float,
    ess: float,
    delta: float,
    h0: float,
    beta1: float,
    beta2: float,
    samples: int,
    seed: int,
    clip: float = math.inf,
) -> tuple[Tensor, Tensor, Tensor]:
    """Algorithm 1 as the paper prints it, on flat float64 vectors: (m, h, g) after the
    batches. The noise is one flat N(0, I) draw per sample from ``seed``."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    m = _flat(list(model.parameters())).clone()
    h, g = torch.full_like(m, h0), torch.zeros_like(m)
    alpha = lr * (h0 + delta)  # the paper's optional rescaling, on as in the package
    noise = torch.Generator().manual_seed(seed)
    for t, (x, y) in enumerate(batches, start=1):
        sigma = 1 / torch.sqrt(ess * (h + delta))
        g_hat, h_hat = torch.zeros_like(m), torch.zeros_like(m)
        for _ in range(samples):
            eps = torch.randn(m.shape, generator=noise, dtype=m.dtype)
            theta = (m + sigma * eps).requires_grad_()
            split = theta.split([shape.numel() for shape in shapes])
            views = [piece.view(shape) for piece, shape in zip(split, shapes, strict=True)]
            pieces = dict(zip(names, views, strict=True))
            loss = F.cross_entropy(functional_call(model, pieces, (x,)), y)
            (grad,) = torch.autograd.grad(loss, theta)
            g_hat += grad / samples
            h_hat += grad * (theta.detach() - m) / sigma**2 / samples
        g = beta1 * g + (1 - beta1) * g_hat
        h = (
            beta2 * h
            + (1 - beta2) * h_hat
            + 0.5 * (1 - beta2) ** 2 * (h - h_hat) ** 2 / (h + delta)
        )
        g_bar = g / (1 - beta1**t)
        m = m - alpha * ((g_bar + delta * m) / (h + delta)).clamp(-clip, clip)
    return m, h, g


def _train(post: IVON, batches: list[tuple[Tensor, Tensor]], lr: float, seed: int) -> IVONOptimiser:
    optimiser = post.make_optimiser(lr)
    generator = torch.Generator().manual_seed(seed)
    for x, y in batches:
        post.train_step(x, y, optimiser, generator=generator)
    return optimiser


@pytest.mark.parametrize(
    ("samples", "clip"), [(1, math.inf), (3, math.inf), (2, 0.05)], ids=["1", "3", "clip"]
)
def test_steps_are_algorithm_1_of_the_paper(samples, clip):
    """β2 = 0.5 so that h moves visibly (the default 0.99999 barely moves it in 4 steps)."""
    model = tiny_mlp()
    batches = _batches(model, 4)
    settings = {"hess_init": 0.5, "beta1": 0.8, "beta2": 0.5, "mc_samples": samples}
    post = IVON(
        copy.deepcopy(model), n_data=N_DATA, prior_variance=2.0, clip_radius=clip, **settings
    )
    trained = _train(post, batches, lr=0.3, seed=5)
    reference = {
        "lr": 0.3,
        "ess": N_DATA,
        "delta": 1 / (N_DATA * 2.0),
        "h0": 0.5,
        "beta1": 0.8,
        "beta2": 0.5,
        "samples": samples,
        "seed": 5,
    }
    m, h, g = _reference(model, batches, clip=clip, **reference)
    ours = _flat(list(post.model.parameters()))
    torch.testing.assert_close(ours, m, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(post.family.hess, h, rtol=1e-12, atol=1e-14)
    momentum = _flat([trained.state[p]["momentum"] for p in post.model.parameters()])
    torch.testing.assert_close(momentum, g, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(h, torch.full_like(h, 0.5))  # h moved
    if math.isfinite(clip):  # the clip bit: without it the weights end elsewhere
        unclipped = _reference(model, batches, **reference)[0]
        assert (unclipped - m).abs().max() > 1e-3


def test_the_posterior_is_gaussian_with_sigma_from_the_hessian_estimate():
    model = tiny_mlp()
    post = IVON(model, n_data=N_DATA, hess_init=0.3, beta2=0.5)
    _train(post, _batches(model, 3), lr=0.2, seed=1)
    h = post.family.hess
    assert h.std() > 0  # per-weight, after steps
    sigma2 = 1 / (post.ess * (h + post.weight_decay))
    torch.testing.assert_close(_flat(post.variances()), sigma2)

    generator = torch.Generator().manual_seed(3)
    draws = torch.stack([_flat(list(post.sample_weights(generator).values())) for _ in range(4000)])
    mean, sigma = _flat(list(post.model.parameters())), sigma2.sqrt()
    z = (draws.mean(0) - mean) / (sigma / math.sqrt(len(draws)))
    assert z.abs().max() < 5  # ~80 weights: a 5σ miss is ~5e-5 likely
    ratio = draws.std(0) / sigma
    assert ratio.min() > 0.9 and ratio.max() < 1.1

    # The sampled predictive averages the network over those draws, seed for seed.
    x = inputs_for(post.model, 5)
    probs = post.predictive_log_probs(x, "sample", 3, torch.Generator().manual_seed(9)).exp()
    again = torch.Generator().manual_seed(9)
    by_hand = torch.stack(
        [
            torch.softmax(functional_call(post.model, post.sample_weights(again), (x,)), -1)
            for _ in range(3)
        ]
    ).mean(0)
    torch.testing.assert_close(probs, by_hand)


def test_the_prior_means_what_it_means_for_every_method():
    """λ = ess (default N/kl_weight), δ = 1/(λ s²): the objective E_q[ℓ̄] + KL(q ‖ N(0, s²))/λ is
    MC-VI's, and its m-gradient is ĝ + δm."""
    post = gradreg.posterior(tiny_mlp(), "ivon", n_data=N_DATA, prior_variance=4.0, kl_weight=0.5)
    assert post.ess == N_DATA / 0.5
    assert post.weight_decay == pytest.approx(1 / (N_DATA / 0.5 * 4.0))
    given = gradreg.posterior(tiny_mlp(), "ivon", n_data=N_DATA, prior_variance=4.0, ess=500.0)
    assert (given.ess, given.weight_decay) == (500.0, pytest.approx(1 / 2000))
    # δ is MAP's weight-decay coefficient with the same prior_variance and kl_weight
    assert post.weight_decay == pytest.approx(0.5 / (N_DATA * 4.0))

    model = post.model
    x, y = _batches(model, 1)[0]
    terms = post.loss(x, y, generator=torch.Generator().manual_seed(2))
    means = list(model.parameters())
    kl = gaussian_kl(post.family.variances(), means, 4.0) / post.ess
    torch.testing.assert_close(terms.kl, kl.detach())
    terms.loss.backward()
    theta = post.sample_weights(torch.Generator().manual_seed(2))
    nll = F.cross_entropy(functional_call(model, theta, (x,)), y)
    g_hat = torch.autograd.grad(nll, means)
    expected = _flat([g + post.weight_decay * m for g, m in zip(g_hat, means, strict=True)])
    torch.testing.assert_close(_flat([p.grad for p in means]), expected)


def test_a_short_fit_on_digits_learns():
    result = fit({"dataset": "digits", "method": "ivon", "epochs": 8, "device": "cpu"})
    metrics = result.metrics
    assert result.config.lr == METHODS["ivon"].defaults["lr"] == 0.1
    assert metrics["test_accuracy"] > 0.5  # chance is 0.1
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["posterior_std_mean"] > 0
    assert result.history[-1]["train_nll"] < result.history[0]["train_nll"]


def test_a_saved_posterior_reloads_every_state_tensor_and_predicts_the_same(tmp_path):
    result = fit({**SMALL, "epochs": 3, "ess": 200.0, "hess_init": 0.5, "mc_samples": 2})
    saved = result.saved()
    loaded = SavedPosterior.load(saved.save(tmp_path / "model"))
    assert type(loaded.posterior) is IVON
    before, after = result.posterior.state_dict(), loaded.posterior.state_dict()
    assert before.keys() == after.keys() and "family.hess" in before
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert (loaded.posterior.ess, loaded.posterior.weight_decay) == (
        result.posterior.ess,
        result.posterior.weight_decay,
    )
    raw = saved.inputs.example
    assert loaded.predictives == ("sample", "mean")
    for mode in ("sample", "mean"):
        assert np.array_equal(
            loaded.predict_proba(raw, mode, n_samples=5, seed=4),
            saved.predict_proba(raw, mode, n_samples=5, seed=4),
        )


def test_a_resumed_run_matches_an_uninterrupted_one():
    """The momentum and step count live in the optimiser's state, h in the posterior's."""
    states = []
    whole = fit({**SMALL, "epochs": 3}, on_epoch=lambda r: states.append(r.state_dict()))
    resumed = fit({**SMALL, "epochs": 3}, resume=states[0])

    def untimed(history: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in record.items() if k != "train_seconds"} for record in history]

    assert untimed(resumed.history) == untimed(whole.history)
    before, after = whole.posterior.state_dict(), resumed.posterior.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert states[0]["optimiser"]["state"][0]["step"] > 0  # the momentum's step count


def test_the_command_line_trains_compares_and_predicts(tmp_path, capsys):
    data = ["--dataset", "iris", "--hidden", "8", "--epochs", "2", "--device", "cpu", "--quiet"]
    ivon = ["--ess", "300", "--hess-init", "0.5", "--beta1", "0.8", "--beta2", "0.999"]
    assert main(["train", *data, "--method", "ivon", *ivon, "--mc-samples", "2", "--json"]) == 0
    config = json.loads(capsys.readouterr().out)["config"]
    assert {k: config[k] for k in ("ess", "hess_init", "beta1", "beta2", "mc_samples", "lr")} == {
        "ess": 300.0,
        "hess_init": 0.5,
        "beta1": 0.8,
        "beta2": 0.999,
        "mc_samples": 2,
        "lr": 0.1,
    }
    assert config["method"] == "ivon"
    assert main(["compare", *data, "--methods", "map,ivon", "--seeds", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {row["label"] for row in summary["summary"]} == {"map", "ivon"}

    directory = fit({**SMALL, "epochs": 2}).saved().save(tmp_path / "model")
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]))
    assert main(["predict", "--model-uri", str(directory), "--input", str(inputs)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("p_")


def test_the_learning_rate_defaults_to_the_methods_own():
    assert TrainConfig(method="ivon").lr == 0.1
    assert TrainConfig(method="map").lr == TrainConfig().lr == DEFAULT_LR
    assert TrainConfig(method="ivon", lr=0.02).lr == 0.02
    spec = CompareSpec(methods=["map", "ivon"], dataset="iris")
    assert (spec.config("map", 0).lr, spec.config("ivon", 0).lr) == (DEFAULT_LR, 0.1)
    assert CompareSpec(methods=["ivon"], lr=0.3).config("ivon", 0).lr == 0.3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"noise_scale": 0.1}, r"method 'ivon' does not use noise_scale; remove it \(settings"),
        ({"fisher": "exact"}, "method 'ivon' does not use fisher"),
        ({"variance": "diagonal"}, "method 'ivon' does not use variance"),
        ({"init_variance": 0.1}, "method 'ivon' does not use init_variance"),
        ({"learn_noise_scale": True}, "method 'ivon' does not use learn_noise_scale"),
        ({"empirical_fisher": True}, "method 'ivon' does not use empirical_fisher"),
        ({"prior_fit": "val_nll"}, "method 'ivon' does not use prior_fit"),
        ({"regulariser_grad": "autograd"}, "method 'ivon' does not use regulariser_grad"),
        ({"variance_lr": 0.1}, "method 'ivon' does not use variance_lr"),
        ({"ess": 0}, r"ess must be a positive finite number, got 0"),
        ({"ess": float("inf")}, r"ess must be a positive finite number, got inf"),
        ({"hess_init": -1.0}, r"hess_init must be a positive finite number, got -1.0"),
        ({"beta1": 1.0}, r"beta1 must be in \[0, 1\), got 1.0"),
        ({"beta2": -0.1}, r"beta2 must be in \[0, 1\), got -0.1"),
        ({"mc_samples": 0}, r"mc_samples must be >= 1, got 0"),
        ({"ess": 100.0, "kl_weight": 0.5}, r"ess=100.0 and kl_weight=0.5 both set IVON's"),
        ({"kl_weight": 0.0}, r"kl_weight=0 makes IVON's effective sample size N/kl_weight"),
    ],
)
def test_train_config_refuses_what_ivon_does_not_take(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(method="ivon", **settings)


def test_the_front_door_refuses_settings_with_the_ones_it_takes():
    model = tiny_mlp()
    with pytest.raises(
        ValueError,
        match=r"'ivon' does not take fisher, noise_scale; it takes: prior_variance, kl_weight, "
        r"ess, hess_init, beta1, beta2, mc_samples",
    ):
        gradreg.posterior(model, "ivon", n_data=10, noise_scale=0.1, fisher="exact")
    with pytest.raises(ValueError, match=r"does not take weight_decay \(weight_decay: the prior"):
        gradreg.posterior(model, "ivon", n_data=10, weight_decay=1e-4)
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) weight_decay \(weight"):
        TrainConfig.from_dict({"method": "ivon", "weight_decay": 1e-4})
    with pytest.raises(ValueError, match=r"method 'map' does not use ess"):
        TrainConfig(method="map", ess=100.0)
    with pytest.raises(TypeError, match=r"mc_samples must be a positive integer"):
        IVON(model, n_data=10, mc_samples=1.5)
    with pytest.raises(ValueError, match=r"clip_radius must be > 0 \(inf: no clipping\)"):
        IVON(model, n_data=10, clip_radius=0.0)


def test_it_trains_only_with_its_own_optimiser_and_refuses_a_non_finite_loss():
    model = tiny_mlp()
    post = IVON(model, n_data=N_DATA)
    x, y = _batches(model, 1)[0]
    with pytest.raises(TypeError, match="IVON trains with its own optimiser"):
        post.train_step(x, y, torch.optim.SGD(model.parameters(), lr=0.1))
    optimiser = post.make_optimiser(0.1)
    with pytest.raises(TypeError, match=r"takes its step from IVON\.train_step"):
        optimiser.step()
    before = copy.deepcopy(post.state_dict())
    with pytest.raises(FloatingPointError, match="train_loss=nan"):
        post.train_step(x * math.nan, y, optimiser)
    after = post.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert optimiser.state_dict()["state"] == {}
