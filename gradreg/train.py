"""fit(): the one training loop that the CLI, the sweeps and the benchmarks all use."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gradreg.config import TrainConfig
from gradreg.curvature.precision import tf32_setting
from gradreg.data import Dataset, load_dataset
from gradreg.device import resolve_device
from gradreg.evaluation.calibration import (
    TemperatureFit,
    fit_temperature,
    temperature_scaled_metrics,
)
from gradreg.evaluation.metrics import ReliabilityBins, classification_metrics, reliability_bins
from gradreg.export import ModelInputs, SavedPosterior
from gradreg.methods import posterior
from gradreg.models import build_model
from gradreg.posteriors.gaussian import GaussianPosterior

EVAL_CHUNK = 2048
STATE_VERSION = 1
# What a resumed run may change: how long it trains, how it is evaluated (a sweep saved
# before the predictive defaulted to each method's own resumes with the new default; only
# the metrics from then on differ, not the trained weights so far), and how the gradient of
# the same objective is computed (regulariser_grad, compile, tf32: a checkpoint written
# before they existed resumes with their defaults).
RESUMABLE_CHANGES = frozenset(
    {"epochs", "predict", "n_samples", "regulariser_grad", "compile", "tf32"}
)


@dataclass
class EpochReport:
    """What ``on_epoch`` receives after every epoch.

    ``metrics`` uses the project's metric names (``train_loss``, ``val_nll``, ``epoch``, …);
    ``test_bins`` are the reliability bins behind this epoch's test metrics;
    ``state_dict()`` is a checkpoint that ``fit(config, resume=...)`` continues from.
    """

    epoch: int
    metrics: dict[str, float]
    test_bins: ReliabilityBins
    _state: Callable[[], dict[str, Any]] = field(repr=False)

    def state_dict(self) -> dict[str, Any]:
        return self._state()


@dataclass
class Predictions:
    """A split's class probabilities under the run's predictive, with its labels."""

    probs: Tensor  # (N, C) float64 on the CPU
    labels: Tensor  # (N,)


@dataclass
class FitResult:
    config: TrainConfig
    history: list[dict[str, float]]
    posterior: GaussianPosterior
    dataset: dict[str, Any]
    test_bins: ReliabilityBins
    stopped_early: bool
    # The last evaluation's predictive probabilities, by split ("val", "test").
    predictions: dict[str, Predictions] = field(default_factory=dict)
    # What the network expects besides its weights (for gradreg.export.SavedPosterior).
    inputs: ModelInputs | None = None
    # The last evaluation's temperature scaling: T, and why it was not fitted when it was not.
    temperature: TemperatureFit | None = None

    def saved(self) -> SavedPosterior:
        """The trained posterior with what it needs to predict from raw inputs."""
        if self.inputs is None:
            raise ValueError("this result carries no model inputs to save")
        return SavedPosterior(self.posterior, self.config, self.inputs)

    @property
    def metrics(self) -> dict[str, float]:
        """The last epoch's metrics."""
        return self.history[-1]


EpochCallback = Callable[[EpochReport], bool | None]


def build_posterior(config: TrainConfig, data: Dataset) -> GaussianPosterior:
    """The method's posterior around a fresh model (seed the RNG first for reproducibility)."""
    model = build_model(config.model, data.input_shape, data.n_classes, **config.model_options)
    return posterior_around(model, config, data.n_train)


def posterior_around(model: nn.Module, config: TrainConfig, n_train: int) -> GaussianPosterior:
    """The method's posterior over ``model``'s weights (compiled first where asked)."""
    if config.compile:
        model.compile()  # in place: parameter names and checkpoints stay those of the model
    built: GaussianPosterior = posterior(
        model, config.method_name, n_data=n_train, **config.posterior_settings()
    )
    return built


def make_optimiser(posterior: GaussianPosterior, config: TrainConfig) -> torch.optim.Optimizer:
    """The posterior's optimiser (`GaussianPosterior.make_optimiser`): Adam over its parameter
    groups (means at lr, variances at variance_lr), or the method's own."""
    return posterior.make_optimiser(config.learning_rate, config.variance_lr)


def load_config_dataset(config: TrainConfig) -> Dataset:
    return load_dataset(
        config.dataset,
        split_seed=config.split_seed,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        **config.dataset_options,
    )


@torch.no_grad()
def predictive_log_probs(
    posterior: GaussianPosterior,
    x: Tensor,
    mode: str,
    n_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """log p(y|x) of the ``mode`` predictive, in chunks, in float64 on the CPU."""
    return torch.cat(
        [
            posterior.predictive_log_probs(chunk, mode, n_samples, generator).cpu()
            for chunk in x.split(EVAL_CHUNK)
        ]
    )


def evaluate(
    posterior: GaussianPosterior,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    prefix: str,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, float], ReliabilityBins]:
    """Metrics of the predictive chosen by ``config.predict`` on (x, y)."""
    log_probs = predictive_log_probs(posterior, x, config.predict_mode, config.n_samples, generator)
    probs, labels = log_probs.exp(), y.cpu()
    return classification_metrics(probs, labels, prefix), reliability_bins(probs, labels)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    test_bins: ReliabilityBins
    predictions: dict[str, Predictions]
    temperature: TemperatureFit


def evaluate_splits(
    posterior: GaussianPosterior,
    splits: Mapping[str, tuple[Tensor, Tensor]],
    config: TrainConfig,
    generator: torch.Generator | None = None,
) -> Evaluation:
    """Everything an epoch reports about the ``val`` and ``test`` splits.

    ``{split}_{metric}``: the method's predictive (``config.predict``);
    ``{split}_{metric}_ts``: the same after temperature scaling fitted on val
    (``val_temperature``; ``val_temperature_fitted`` is 0 and T = 1 where the validation data
    do not determine a T, see `gradreg.evaluation.calibration`); ``{split}_{metric}_at_mean``: the
    network at the posterior mean.
    """
    posterior.eval()
    log_probs = {
        split: predictive_log_probs(posterior, x, config.predict_mode, config.n_samples, generator)
        for split, (x, _) in splits.items()
    }
    labels = {split: y.cpu() for split, (_, y) in splits.items()}
    metrics: dict[str, float] = {}
    for split in splits:
        metrics.update(classification_metrics(log_probs[split].exp(), labels[split], f"{split}_"))
    temperature = fit_temperature(log_probs["val"], labels["val"])
    metrics.update(
        temperature_scaled_metrics(
            (log_probs["val"], labels["val"]),
            {f"{s}_": (log_probs[s], labels[s]) for s in splits if s != "val"},
            temperature,
        )
    )
    for split, (x, _) in splits.items():
        at_mean = (
            log_probs[split]
            if config.predict == "mean"
            else predictive_log_probs(posterior, x, "mean", 1)
        )
        named = classification_metrics(at_mean.exp(), labels[split], f"{split}_")
        metrics.update({f"{name}_at_mean": value for name, value in named.items()})
    test_probs = log_probs["test"].exp()
    return Evaluation(
        metrics=metrics,
        test_bins=reliability_bins(test_probs, labels["test"]),
        predictions={s: Predictions(log_probs[s].exp(), labels[s]) for s in splits},
        temperature=temperature,
    )


def fit(
    config: TrainConfig | Mapping[str, Any],
    on_epoch: EpochCallback | None = None,
    *,
    resume: Mapping[str, Any] | None = None,
    on_data: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train ``config`` with its method's objective; report after every epoch.

    ``on_epoch(report)`` may return True to stop after that epoch (a cooperative stop).
    ``resume`` is a ``report.state_dict()`` from an earlier run of the same config; training
    continues after its epoch with the same random streams, so results match an
    uninterrupted run. ``on_data(summary)`` gets the loaded dataset's `Dataset.summary()`
    (sizes, classes, provenance) before training starts. Torch's TF32 flags are as
    ``config.tf32`` asks while it trains, and as they were once it returns.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(dict(config))
    with tf32_setting(config.tf32):
        return _fit(config, on_epoch, resume, on_data)


def _fit(
    config: TrainConfig,
    on_epoch: EpochCallback | None,
    resume: Mapping[str, Any] | None,
    on_data: Callable[[dict[str, Any]], None] | None,
) -> FitResult:
    device = resolve_device(config.device)
    data = load_config_dataset(config)
    if on_data is not None:
        on_data(data.summary())
    torch.manual_seed(config.seed)
    posterior = build_posterior(config, data).to(device)
    optimiser = make_optimiser(posterior, config)
    shuffle = torch.Generator().manual_seed(config.seed)
    sampling = torch.Generator(device=device).manual_seed(config.seed + 1)
    history: list[dict[str, float]] = []
    start = 0
    if resume is not None:
        start, history = _restore(resume, config, posterior, optimiser, shuffle, sampling)

    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)

    def state() -> dict[str, Any]:
        return copy.deepcopy(
            {
                "version": STATE_VERSION,
                "config": config.to_dict(),
                "epoch": history[-1]["epoch"] if history else 0,
                "history": history,
                "posterior": posterior.state_dict(),
                "optimiser": optimiser.state_dict(),
                "shuffle_rng": shuffle.get_state(),
                "sampling_rng": sampling.get_state(),
            }
        )

    splits = {"val": (x_val, y_val), "test": (x_test, y_test)}
    stopped_early = False
    evaluation = None
    for epoch in range(start + 1, config.epochs + 1):
        posterior.train()
        started = time.perf_counter()
        order = torch.randperm(data.n_train, generator=shuffle).to(device)
        sums = _train_epoch(posterior, optimiser, x_train, y_train, order, config, epoch, sampling)
        record: dict[str, float] = {"epoch": epoch}
        record.update({key: total / data.n_train for key, total in sums.items()})
        if epoch == config.epochs:  # the method's post-hoc step (Laplace), on the final network
            chosen = posterior.after_training(
                (x_train, y_train),
                (x_val, y_val),
                predict=config.predict_mode,
                n_samples=config.n_samples,
                generator=sampling,
            )
            record.update({f"posterior_{key}": value for key, value in chosen.items()})
        train_seconds = time.perf_counter() - started
        evaluation = evaluate_splits(posterior, splits, config, sampling)
        record.update(evaluation.metrics)
        record["posterior_std_mean"] = _mean_std(posterior)
        record["train_seconds"] = train_seconds
        history.append(record)
        report = EpochReport(epoch, dict(record), evaluation.test_bins, state)
        if on_epoch is not None and on_epoch(report):
            stopped_early = epoch < config.epochs
            break

    if evaluation is None:  # resumed from a finished run: evaluate once for the bins
        evaluation = evaluate_splits(posterior, splits, config, sampling)
    return FitResult(
        config,
        history,
        posterior,
        data.summary(),
        evaluation.test_bins,
        stopped_early,
        evaluation.predictions,
        ModelInputs.of(data),
        evaluation.temperature,
    )


def _train_epoch(
    posterior: GaussianPosterior,
    optimiser: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    order: Tensor,
    config: TrainConfig,
    epoch: int,
    sampling: torch.Generator,
) -> dict[str, float]:
    """One pass over ``order``; returns the loss terms summed over examples."""
    sums = {"train_loss": 0.0, "train_nll": 0.0, "train_sqgrad": 0.0, "train_kl": 0.0}
    for step, index in enumerate(order.split(config.batch_size), start=1):
        try:
            values = train_step(posterior, optimiser, x[index], y[index], config, sampling)
        except FloatingPointError as error:
            raise FloatingPointError(
                f"training diverged in epoch {epoch}, step {step}: {error} "
                f"(lr={config.learning_rate}, "
                f"noise_scale={config.noise_scale}, init_variance={config.init_variance}); "
                "lower the learning rate or the variances"
            ) from error
        for key, value in values.items():
            sums[key] += value * len(index)
    return sums


def train_step(
    posterior: GaussianPosterior,
    optimiser: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    sampling: torch.Generator,
) -> dict[str, float]:
    """One step of the method's objective on the batch (x, y) (`GaussianPosterior.train_step`:
    the loss, its backward and the optimiser's step, or the method's own step), its forward
    passes under bf16 autocast where asked. Returns the loss terms; a loss that is not finite
    raises FloatingPointError before any parameter moves."""

    def forward() -> AbstractContextManager[Any]:
        if config.bf16:
            return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
        return nullcontext()

    return posterior.train_step(x, y, optimiser, generator=sampling, forward=forward)


def _mean_std(posterior: GaussianPosterior) -> float:
    variances = posterior.variances()
    total = sum(float(v.sqrt().sum()) for v in variances)
    return total / sum(v.numel() for v in variances)


def _restore(
    state: Mapping[str, Any],
    config: TrainConfig,
    posterior: GaussianPosterior,
    optimiser: torch.optim.Optimizer,
    shuffle: torch.Generator,
    sampling: torch.Generator,
) -> tuple[int, list[dict[str, float]]]:
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"resume state has version {state.get('version')!r}; this gradreg reads {STATE_VERSION}"
        )
    if state["config"] != config.to_dict():
        changed = sorted(k for k, v in config.to_dict().items() if state["config"].get(k) != v)
        if set(changed) - RESUMABLE_CHANGES:
            raise ValueError(
                "resume state was written by a different config (differs in "
                f"{', '.join(changed)}); only {', '.join(sorted(RESUMABLE_CHANGES))} may "
                "change when resuming"
            )
    posterior.load_state_dict(state["posterior"])
    optimiser.load_state_dict(state["optimiser"])
    shuffle.set_state(state["shuffle_rng"])
    sampling.set_state(state["sampling_rng"])
    return int(state["epoch"]), [dict(r) for r in state["history"]]
