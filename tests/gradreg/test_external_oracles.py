"""gradreg's Fisher estimators, diagonal Laplace and IVON against external libraries.

BackPACK (Dangel et al. 2020), laplace-torch (Daxberger et al. 2021) and ivon-opt (Shen et al.
2024) are independent implementations; they are test-only dependencies, installed with
``--no-deps`` from requirements-oracles.txt (the first two declare torchvision, which cannot be
imported beside the pinned torch). gradreg never imports them: ivon-opt is GPLv3+, and
gradreg's IVON is written from the paper (tests/test_architecture.py forbids the import). A
missing oracle fails these tests: it never skips them.

BackPACK's extensions use full backward hooks, which reject in-place ops on a hooked module's
output, so each oracle runs on a deep copy of the model with ``ReLU(inplace=False)`` (the same
function); gradreg always runs on the original. Everything is float64.
"""

from __future__ import annotations

import copy
import importlib.metadata
import math
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from gradreg import IVON as GradregIVON
from gradreg import Laplace as GradregLaplace
from gradreg import fisher_diagonal
from tests.helpers.oracles import inputs_for, tiny_cnn2d, tiny_mlp

try:
    with warnings.catch_warnings():
        # asdl (laplace-torch's ASDL backend) applies torch.jit.script at import.
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad, DiagGGNExact, DiagGGNMC
        from laplace import Laplace as LaplaceTorch
        from laplace.curvature import BackPackGGN, CurvlinopsGGN
    import ivon
except ImportError as exc:  # fail loudly in every test below, never skip
    MISSING_ORACLE: ImportError | None = exc
else:
    MISSING_ORACLE = None

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements-oracles.txt"
MODELS = {"mlp": tiny_mlp, "cnn2d": tiny_cnn2d}
N_CLASSES = 3  # both tiny models

pytestmark = [
    # BackPACK hooks a model whose input does not require grad; harmless, and not ours.
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
]


@pytest.fixture(autouse=True)
def _require_oracles() -> None:
    if MISSING_ORACLE is not None:
        pytest.fail(
            f"an external oracle is not installed ({MISSING_ORACLE}). Install the test-only "
            "oracles with `.venv/bin/python -m pip install --no-deps --constraint "
            "constraints.txt -r requirements-oracles.txt` (or `make install`).",
            pytrace=False,
        )


def _oracle_copy(model: nn.Module) -> nn.Module:
    """A deep copy that BackPACK can hook: in-place ReLUs become out-of-place."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return clone


def _backpack_quantity(
    model: nn.Module, x: Tensor, y: Tensor, extension: object, attribute: str
) -> list[Tensor]:
    """One BackPACK backward of CrossEntropyLoss(reduction="sum"); ``attribute`` per param."""
    clone = extend(_oracle_copy(model))
    loss = extend(nn.CrossEntropyLoss(reduction="sum"))
    clone.zero_grad()
    with backpack(extension):
        loss(clone(x), y).backward()
    return [getattr(p, attribute).detach().clone() for p in clone.parameters()]


def _labels(n: int, seed: int = 3) -> Tensor:
    return torch.randint(0, N_CLASSES, (n,), generator=torch.Generator().manual_seed(seed))


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _max_relative(ours: list[Tensor], theirs: list[Tensor]) -> float:
    """max |ours − theirs| / max |theirs| over all parameters."""
    a, b = _flat(ours), _flat(theirs)
    return float((a - b).abs().max() / b.abs().max())


# ------------------------------------------------------------------ BackPACK


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_exact_matches_backpack_diag_ggn_exact(kind):
    """`exact` is the GGN diagonal of the summed cross-entropy (for softmax outputs the GGN is
    the Fisher); DiagGGNExact does not depend on the labels, any will do."""
    model = MODELS[kind]()
    x = inputs_for(model, 6)
    ours = fisher_diagonal(model, x, estimator="exact")
    theirs = _backpack_quantity(model, x, _labels(6), DiagGGNExact(), "diag_ggn_exact")
    assert [o.shape for o in ours] == [t.shape for t in theirs]
    relative = _max_relative(ours, theirs)
    assert relative < 1e-10, f"{kind}: exact vs DiagGGNExact differ by {relative:.3g} relative"


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_per_example_with_labels_matches_backpack_batch_grad(kind):
    """`per_example` with the true labels is the empirical Fisher Σ_i g_i(y_i)²; with
    reduction="sum" BackPACK's per-example gradients are unscaled, and their sign is irrelevant
    once squared."""
    model = MODELS[kind]()
    x, y = inputs_for(model, 6), _labels(6)
    ours = fisher_diagonal(model, x, estimator="per_example", labels=y)
    grad_batch = _backpack_quantity(model, x, y, BatchGrad(), "grad_batch")
    theirs = [g.square().sum(0) for g in grad_batch]
    relative = _max_relative(ours, theirs)
    assert relative < 1e-10, f"{kind}: per_example vs BatchGrad² differ by {relative:.3g} relative"


def test_sampled_expectation_matches_backpack_diag_ggn_mc():
    """`sampled` is (∂ Σ_i log p(ỹ_i|x_i))², the square of the *batch* gradient with ỹ_i drawn
    from the model: it is unbiased for the batch Fisher Σ_i F_i only because the cross terms
    2 g_i(ỹ_i) g_j(ỹ_j), i ≠ j, have zero mean (independent labels, model-sampled scores have
    mean zero). BackPACK's DiagGGNMC is a different Monte-Carlo estimator of the same quantity,
    Σ_i (1/M) Σ_m g_i(ỹ_im)², per example and without cross terms.

    Both means must agree with each other, and each with DiagGGNExact, within 5 Monte-Carlo
    standard errors elementwise (plus a tiny atol for weights whose Fisher is exactly zero:
    dead ReLU units); and our standard error must be small enough for that to have teeth.
    """
    model = tiny_mlp()
    x = inputs_for(model, 4)
    y = _labels(4)  # ignored by DiagGGNExact and DiagGGNMC, which sample their own
    exact = _flat(_backpack_quantity(model, x, y, DiagGGNExact(), "diag_ggn_exact"))

    draws = 4000
    generator = torch.Generator().manual_seed(0)
    ours_draws = torch.stack(
        [
            _flat(fisher_diagonal(model, x, estimator="sampled", generator=generator))
            for _ in range(draws)
        ]
    )
    ours, ours_se = ours_draws.mean(0), ours_draws.std(0) / draws**0.5

    repeats, mc_samples = 20, 2000
    with torch.random.fork_rng():  # DiagGGNMC samples from the global generator
        torch.manual_seed(0)
        mc = torch.stack(
            [
                _flat(_backpack_quantity(model, x, y, DiagGGNMC(mc_samples), "diag_ggn_mc"))
                for _ in range(repeats)
            ]
        )
    theirs, theirs_se = mc.mean(0), mc.std(0) / repeats**0.5

    atol = 1e-12
    scale = float(exact.sum())
    assert float(ours_se.sum()) / scale < 0.05, "too few draws to resolve a bias of a few %"

    def check(a: Tensor, b: Tensor, se: Tensor, what: str) -> None:
        diff = (a - b).abs()
        bad = diff >= 5 * se + atol
        z = float((diff / se.clamp_min(1e-300)).max())
        assert not bool(bad.any()), (
            f"{what}: {int(bad.sum())} of {a.numel()} weights beyond 5 SE; "
            f"max |diff| {float(diff.max()):.3g}, max |diff|/SE {z:.3g}"
        )

    check(ours, exact, ours_se, "sampled mean vs DiagGGNExact")
    check(theirs, exact, theirs_se, "DiagGGNMC mean vs DiagGGNExact")
    check(ours, theirs, (ours_se.square() + theirs_se.square()).sqrt(), "sampled vs DiagGGNMC")


# ------------------------------------------------------------------ laplace-torch


@pytest.mark.parametrize("batch_size", [40, 16], ids=["full-batch", "minibatch"])
@pytest.mark.parametrize("backend", ["default", "BackPackGGN"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_diag_laplace_matches_laplace_torch(kind, backend, batch_size):
    """laplace-torch's all-weights diag-GGN Laplace: posterior_precision = H + δ with H the GGN
    diagonal of CrossEntropyLoss(reduction="sum") summed over the loader (its default backend,
    CurvlinopsGGN, via Jacobians; BackPackGGN via DiagGGNExact), which is gradreg's σ² =
    1/(F + δ) with F the exact Fisher summed over the data. Both sum, neither averages, so the
    batch size does not matter."""
    model = MODELS[kind]()
    n, delta = 40, 0.7
    x, y = inputs_for(model, n), _labels(n)

    ours = GradregLaplace(model, n_data=n, prior_variance=1.0 / delta, fisher="exact")
    ours.fit_curvature(x, y)
    ours_var = _flat(ours.variances())

    kwargs = {} if backend == "default" else {"backend": BackPackGGN}
    theirs = LaplaceTorch(
        _oracle_copy(model),
        "classification",
        subset_of_weights="all",
        hessian_structure="diag",
        prior_precision=delta,
        **kwargs,
    )
    if backend == "default":
        assert theirs._backend_cls is CurvlinopsGGN  # what "default" tests, in laplace-torch 0.3
    theirs.fit(DataLoader(TensorDataset(x, y), batch_size=batch_size))
    theirs_var = theirs.posterior_variance.detach()

    relative = float(((ours_var - theirs_var).abs() / theirs_var).max())
    assert relative < 1e-12, f"{kind}/{backend}: σ² differs by {relative:.3g} relative"


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_last_layer_kron_laplace_matches_on_one_example(kind):
    """laplace-torch's last-layer KFAC (exact type-2 factors) is exact for one example: the
    last Linear's GGN is then (a aᵀ) ⊗ H for its input a (bias: H alone), so the diagonal of
    its posterior precision is the exact Fisher of that layer plus δ."""
    model = MODELS[kind]()
    x, y = inputs_for(model, 1), _labels(1)
    delta = 0.7
    fisher = fisher_diagonal(model, x, estimator="exact")
    last_layer = torch.cat([fisher[-2].reshape(-1), fisher[-1].reshape(-1)])  # weight, bias

    theirs = LaplaceTorch(
        _oracle_copy(model),
        "classification",
        subset_of_weights="last_layer",
        hessian_structure="kron",
        prior_precision=delta,
    )
    theirs.fit(DataLoader(TensorDataset(x, y), batch_size=1))
    diagonal = theirs.posterior_precision.to_matrix().diagonal().detach() - delta

    assert diagonal.shape == last_layer.shape
    relative = float((diagonal - last_layer).abs().max() / last_layer.abs().max())
    assert relative < 1e-12, f"{kind}: last-layer KFAC diagonal differs by {relative:.3g}"


# ------------------------------------------------------------------ laplace-torch: evidence, δ, GLM
#
# laplace-torch's all-weights diag Laplace is fitted once on a DataLoader over the whole (x, y)
# and compared with gradreg's post-hoc Laplace on the same weights. Neither needs the weights to
# be a MAP: both evaluate their formulas at the current θ (the tiny models are at their init).


def softmax_regression(seed: int = 0) -> nn.Module:
    """Multiclass logistic regression: the GGN is then the exact Hessian."""
    torch.manual_seed(seed)
    return nn.Linear(5, N_CLASSES).double()


POSTHOC_MODELS = {"mlp": tiny_mlp, "softmax_regression": softmax_regression}


def _posthoc_pair(kind: str, n: int = 40) -> tuple[nn.Module, Tensor, Tensor, object, object]:
    """(model, x, y, gradreg's Laplace, laplace-torch's DiagLaplace), both fitted on (x, y)."""
    model = POSTHOC_MODELS[kind]()
    x, y = inputs_for(model, n), _labels(n)
    ours = GradregLaplace(model, n_data=n, prior_variance=1.0, fisher="exact")
    ours.fit_curvature(x, y)
    theirs = LaplaceTorch(
        _oracle_copy(model), "classification", subset_of_weights="all", hessian_structure="diag"
    )
    theirs.fit(DataLoader(TensorDataset(x, y), batch_size=n))
    # The terms the comments below rely on: a likelihood at temperature 1 (no noise scale
    # for classification), so log_likelihood = −Σ CE and posterior precision = H + δ.
    assert theirs.temperature == 1.0 and float(theirs._H_factor) == 1.0
    return model, x, y, ours, theirs


def _f64(value: float) -> Tensor:
    """δ as a float64 tensor. `torch.tensor(0.05)` is float32, which laplace-torch's setter
    keeps (it only casts to the model's dtype): δ rounded by up to 3e-8 relative moves the
    log evidence here by up to 6e-7 (measured), far beyond the 1e-12 checked below."""
    return torch.tensor(value, dtype=torch.float64)


@pytest.mark.parametrize("kind", sorted(POSTHOC_MODELS))
def test_log_marginal_likelihood_matches_laplace_torch(kind):
    """laplace-torch's ParametricLaplace.log_marginal_likelihood is
    log_likelihood − ½ (log_det_ratio + scatter) with log_likelihood = −(1/T) Σ_i CE_i
    (CrossEntropyLoss(reduction="sum"), factor 1; T = 1), log_det_ratio = Σ log(H + δ) − P log δ
    and scatter = δ ‖θ − 0‖²: term for term gradreg's Σ log p(y|x,θ) − δ‖θ‖²/2 + (P/2) log δ
    − ½ Σ log(F + δ). Neither carries a 2π: the prior's and the posterior's (2π)^{P/2} cancel.
    So the constant offset is zero and the values themselves must agree, not only their
    differences across δ (checked too: they are what a choice of δ depends on)."""
    _, x, y, ours, theirs = _posthoc_pair(kind)
    precisions = (0.05, 0.7, 3.0, 25.0)
    ours_lml = torch.tensor(
        [ours.log_marginal_likelihood(x, y, d) for d in precisions], dtype=torch.float64
    )
    theirs_lml = torch.tensor(
        [float(theirs.log_marginal_likelihood(prior_precision=_f64(d))) for d in precisions],
        dtype=torch.float64,
    )
    relative = float(((ours_lml - theirs_lml).abs() / theirs_lml.abs()).max())
    assert relative < 1e-12, f"{kind}: log evidence differs by {relative:.3g} relative"

    ours_steps, theirs_steps = ours_lml.diff(), theirs_lml.diff()
    relative = float(((ours_steps - theirs_steps).abs() / theirs_steps.abs()).max())
    assert relative < 1e-10, f"{kind}: log-evidence differences differ by {relative:.3g}"


@pytest.mark.parametrize("kind", sorted(POSTHOC_MODELS))
def test_marglik_precision_matches_laplace_torch(kind):
    """gradreg's δ* is the root of ∂ log p(D)/∂δ (Brent, xtol 1e-10 in log δ); laplace-torch's
    optimize_prior_precision(method="marglik") runs Adam on log δ from δ = 1, whose defaults
    (100 steps, lr 0.1) stop 3e-3 … 8e-3 relative short here, and 200 such steps 2e-5 … 4e-5.
    A second, finer run from there (300 steps, lr 0.01) lands within 2e-9 (measured), so 1e-7
    is a convergence margin, not a loose test. Independently of Adam, laplace-torch's own log
    evidence must be stationary at gradreg's δ*: its autograd slope in log δ (−17 and −9 at
    e·δ*, ≤ 3e-13 at δ*, measured) must stay under 1e-9 P, which puts laplace-torch's own
    optimum within ~1e-8 relative of gradreg's δ*."""
    _, _, _, ours, theirs = _posthoc_pair(kind)
    ours_precision = ours.marglik_precision()

    with warnings.catch_warnings():
        # It reminds classification users to match link_approx in their predictive calls.
        warnings.filterwarnings("ignore", "By default `link_approx` is `probit`", UserWarning)
        theirs.optimize_prior_precision(
            pred_type="glm", method="marglik", prior_structure="scalar", n_steps=200, lr=0.1
        )
        theirs.optimize_prior_precision(
            pred_type="glm",
            method="marglik",
            prior_structure="scalar",
            n_steps=300,
            lr=0.01,
            init_prior_prec=theirs.prior_precision.detach().clone(),
        )
    theirs_precision = float(theirs.prior_precision)
    relative = abs(ours_precision / theirs_precision - 1)
    assert relative < 1e-7, (
        f"{kind}: marglik δ {ours_precision:.10g} vs laplace-torch {theirs_precision:.10g} "
        f"({relative:.3g} relative)"
    )

    log_precision = torch.tensor(math.log(ours_precision), dtype=torch.float64, requires_grad=True)
    theirs.log_marginal_likelihood(prior_precision=log_precision.exp()).backward()
    n_params = sum(p.numel() for p in theirs.model.parameters())
    slope = float(log_precision.grad)
    assert abs(slope) < 1e-9 * n_params, f"{kind}: laplace-torch's slope at δ* is {slope:.3g}"


@pytest.mark.parametrize("precision", [0.05, 0.7])
@pytest.mark.parametrize("kind", sorted(POSTHOC_MODELS))
def test_glm_probit_matches_laplace_torch(kind, precision):
    """laplace-torch's GLM predictive forms the full per-example logit covariance
    J diag(1/(H + δ)) Jᵀ (DiagLaplace.functional_variance) but its probit link reads only the
    diagonal (κ = 1/√(1 + π/8 · diag f_var), softmax(κ f_μ)): gradreg's v. The test inputs are
    not the training inputs, and the posterior's variance must visibly move the predictive."""
    model, _, _, ours, theirs = _posthoc_pair(kind)
    ours.set_prior_precision(precision)
    theirs.prior_precision = precision
    x_test = inputs_for(model, 25, seed=7)

    ours_probs = ours.predictive_log_probs(x_test, "glm_probit").exp()
    theirs_probs = theirs(x_test, pred_type="glm", link_approx="probit")
    difference = float((ours_probs - theirs_probs).abs().max())
    assert difference < 1e-12, f"{kind}, δ={precision}: probit predictive differs by {difference}"

    with torch.no_grad():
        map_probs = torch.softmax(model(x_test), dim=-1)
    assert float((theirs_probs - map_probs).abs().max()) > 1e-3, "the variance barely matters"


# torch's forward-mode AD (gradreg's glm_mc JVPs) scripts its decompositions on first use.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("kind", sorted(POSTHOC_MODELS))
def test_glm_mc_matches_laplace_torch(kind):
    """Both sample the same linearised logits N(f_μ, J diag(σ²) Jᵀ): gradreg in weight space
    (f_μ + J(σ ⊙ ε), by JVPs), laplace-torch in output space (the Cholesky factor of the full
    logit covariance, utils.normal_samples). Their means must agree within 5 Monte-Carlo standard
    errors per entry; the per-draw spread comes from laplace-torch's draws (predictive_samples
    under the same global seed reproduces the draws la(..., link_approx="mc") averages; it
    takes no generator). The MAP and the probit predictives, which a test with teeth must
    reject, lie 8.5 … 23 SE away (measured), beyond 8."""
    model, _, _, ours, theirs = _posthoc_pair(kind)
    precision, draws = 0.03, 6000
    ours.set_prior_precision(precision)
    theirs.prior_precision = precision
    x_test = inputs_for(model, 25, seed=7)

    generator = torch.Generator().manual_seed(0)
    ours_probs = ours.predictive_log_probs(x_test, "glm_mc", draws, generator).exp()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs_probs = theirs(x_test, pred_type="glm", link_approx="mc", n_samples=draws)
        torch.manual_seed(0)
        samples = theirs.predictive_samples(x_test, pred_type="glm", n_samples=draws)
    assert torch.equal(samples.mean(0), theirs_probs)
    se = samples.std(0) * (2 / draws) ** 0.5  # of the difference of two independent means

    z = float(((ours_probs - theirs_probs).abs() / se).max())
    assert z < 5, f"{kind}: glm_mc vs laplace-torch mc differ by {z:.3g} SE (max over entries)"

    with torch.no_grad():
        map_probs = torch.softmax(model(x_test), dim=-1)
    probit_probs = theirs(x_test, pred_type="glm", link_approx="probit")
    for other, name in ((map_probs, "MAP"), (probit_probs, "probit")):
        resolved = float(((theirs_probs - other).abs() / se).max())
        assert resolved > 8, f"{kind}: the {name} predictive is only {resolved:.3g} SE away"


# ------------------------------------------------------------------ ivon-opt


@pytest.fixture
def _float64_default() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _ivon_pair(kind: str, samples: int, clip: float) -> tuple[nn.Module, GradregIVON, object]:
    """gradreg's IVON and ivon-opt's on two copies of one float64 network, with the same
    settings: λ = 30, prior variance 2 (δ = 1/(λ s²)), h₀ = 0.3, β = (0.8, 0.9) so that h
    moves within a few steps (the default β2 = 0.99999 barely does). ivon-opt makes its state
    and noise in torch's default dtype: run it under float64 (`_float64_default`)."""
    model = MODELS[kind]()
    ours = GradregIVON(
        copy.deepcopy(model),
        n_data=60,
        prior_variance=2.0,
        ess=30.0,
        hess_init=0.3,
        beta1=0.8,
        beta2=0.9,
        mc_samples=samples,
        clip_radius=clip,
    )
    theirs = ivon.IVON(
        model.parameters(),
        lr=0.2,
        ess=30.0,
        hess_init=0.3,
        beta1=0.8,
        beta2=0.9,
        weight_decay=1 / (30.0 * 2.0),
        mc_samples=samples,
        clip_radius=clip,
    )
    return model, ours, theirs


@pytest.mark.parametrize(
    ("kind", "samples", "clip"),
    [("mlp", 1, math.inf), ("mlp", 3, math.inf), ("cnn2d", 2, math.inf), ("mlp", 2, 0.02)],
    ids=["mlp-1", "mlp-3", "cnn2d-2", "mlp-2-clipped"],
)
@pytest.mark.usefixtures("_float64_default")
def test_ivon_steps_and_samples_match_ivon_opt(kind, samples, clip):
    """The same seed and batches give the same weights, Hessian estimate, momentum and
    posterior samples after k steps. ivon-opt draws each sample's noise as one flat
    torch.randn over all weights in parameter order from the global generator (found by
    comparing its sampled weights with such draws); gradreg draws the same from its own
    generator with the same seed."""
    model, ours, theirs = _ivon_pair(kind, samples, clip)
    batches = [(inputs_for(model, 8, seed=20 + k), _labels(8, seed=40 + k)) for k in range(5)]
    optimiser = ours.make_optimiser(0.2)
    generator = torch.Generator().manual_seed(17)
    with torch.random.fork_rng():
        torch.manual_seed(17)
        for x, y in batches:
            ours.train_step(x, y, optimiser, generator=generator)
            for _ in range(samples):
                with theirs.sampled_params(train=True):
                    theirs.zero_grad()
                    nn.functional.cross_entropy(model(x), y).backward()
            theirs.step()

    group = theirs.param_groups[0]
    mine = [p.detach() for p in ours.model.parameters()]
    assert _max_relative(mine, [p.detach() for p in model.parameters()]) < 1e-12
    assert float((ours.family.hess - group["hess"]).abs().max()) < 1e-12
    assert not torch.allclose(group["hess"], torch.full_like(group["hess"], 0.3))  # h moved
    momentum = _flat([optimiser.state[p]["momentum"] for p in ours.model.parameters()])
    assert float((momentum - group["momentum"]).abs().max()) < 1e-13

    with torch.random.fork_rng():
        torch.manual_seed(5)
        with theirs.sampled_params():
            their_sample = [p.detach().clone() for p in model.parameters()]
    our_sample = list(ours.sample_weights(torch.Generator().manual_seed(5)).values())
    assert _max_relative([s.detach() for s in our_sample], their_sample) < 1e-12
    assert _max_relative(our_sample, mine) > 1e-3  # a sample, not the mean


# ------------------------------------------------------------------ the installation


def test_oracles_do_not_import_torchvision():
    """torchvision cannot be imported beside the pinned torch; the oracles must not need it."""
    code = (
        "import sys, backpack, laplace, ivon\n"
        "from backpack.extensions import BatchGrad, DiagGGNExact, DiagGGNMC\n"
        "from laplace import Laplace\n"
        "from laplace.curvature import BackPackGGN, CurvlinopsGGN\n"
        "print('torchvision' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", "importing the oracles imported torchvision"


def test_installed_oracles_match_their_pins():
    """The venv holds exactly the versions requirements-oracles.txt pins."""
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            pinned = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", spec)
            assert pinned, f"requirements-oracles.txt: {spec!r} is not pinned with =="
            pins[pinned[1]] = pinned[2]
    assert {"laplace-torch", "backpack-for-pytorch", "ivon-opt"} <= set(pins)
    installed = {}
    for name in pins:
        try:
            installed[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed[name] = None
    assert installed == pins
