"""fit(): metrics contract, callbacks, cooperative stop, exact resume, divergence, bf16."""

from __future__ import annotations

import math

import pytest
import torch

from gradreg.artifacts import result_summary
from gradreg.config import TrainConfig
from gradreg.names import EPOCH_METRICS
from gradreg.train import fit

SMALL = dict(
    dataset="iris",
    model="mlp",
    model_options={"hidden": [16]},
    epochs=3,
    batch_size=32,
    variance="uniform",
    noise_scale=0.05,
    device="cpu",
)
EPOCH_KEYS = {
    "epoch",
    "train_loss",
    "train_nll",
    "train_sqgrad",
    "train_kl",
    *(
        f"{split}_{m}{variant}"
        for variant in ("", "_ts", "_at_mean")
        for split in ("val", "test")
        for m in ("accuracy", "nll", "ece", "aece", "brier")
    ),
    "val_temperature",
    "val_temperature_fitted",
    "posterior_std_mean",
    "train_seconds",
}


def test_fit_reports_every_epoch_with_the_project_metric_names():
    reports = []
    result = fit(SMALL, on_epoch=reports.append)
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert all(set(r.metrics) == EPOCH_KEYS for r in reports)
    assert list(reports[0].metrics) == list(EPOCH_METRICS)
    assert all(math.isfinite(v) for r in reports for v in r.metrics.values())
    assert result.metrics == reports[-1].metrics
    first, last = reports[0].metrics, reports[-1].metrics
    assert last["train_nll"] < first["train_nll"]
    assert last["train_loss"] == pytest.approx(
        last["train_nll"] + last["train_sqgrad"] + last["train_kl"], rel=1e-6
    )
    assert last["posterior_std_mean"] == pytest.approx(0.05)
    assert result.test_bins.count.sum() == result.dataset["n_test"]
    assert result.test_bins is reports[-1].test_bins
    assert not result.stopped_early


def test_digits_vl_learns_something_real():
    result = fit(
        dict(dataset="digits", epochs=8, variance="uniform", noise_scale=0.01, device="cpu")
    )
    assert result.metrics["test_accuracy"] > 0.9
    assert result.metrics["test_nll"] < 0.4


# Wine's 27 validation rows, all classified right by epoch 6 with one test error: the split
# the user's noisy wine file gave. Fitted anyway, T ran off to 0.026 and the scaled test NLL
# was 0.55 against 0.18 raw.
SEPARABLE_VALIDATION = dict(
    dataset="wine",
    split_seed=15,
    seed=15,
    model="mlp",
    model_options={"hidden": [16]},
    epochs=6,
    batch_size=32,
    lr=0.01,
    variance="uniform",
    noise_scale=0.01,
    device="cpu",
)


def test_a_validation_split_classified_correctly_leaves_the_temperature_at_1_and_says_why():
    result = fit(SEPARABLE_VALIDATION)
    final = result.metrics
    assert final["val_accuracy"] == 1.0 and final["test_accuracy"] < 1.0  # the case at hand
    assert (final["val_temperature"], final["val_temperature_fitted"]) == (1.0, 0.0)
    for split in ("val", "test"):
        for metric in ("accuracy", "nll", "ece", "aece", "brier"):
            assert final[f"{split}_{metric}_ts"] == pytest.approx(final[f"{split}_{metric}"])
    assert result.temperature is not None and not result.temperature.fitted
    assert result.temperature.reason == (
        "not fitted: all 27 validation examples are classified correctly with a margin, so "
        "the NLL falls as T -> 0 and has no finite minimiser"
    )
    assert result_summary(result)["temperature_scaling"] == result.temperature.reason  # --json
    # An epoch whose validation split is not yet separated still fits T.
    assert any(h["val_temperature_fitted"] == 1.0 for h in result.history)


def test_callback_returning_true_stops_after_that_epoch():
    result = fit({**SMALL, "epochs": 5}, on_epoch=lambda report: report.epoch == 2)
    assert len(result.history) == 2
    assert result.stopped_early


RESUMABLE = {
    "vl-uniform": {},
    "vl-diagonal": {"variance": "diagonal", "noise_scale": None},
    "map": {"method": "map", "variance": None, "noise_scale": None},
    "mcvi": {
        "method": "mcvi",
        "variance": None,
        "noise_scale": None,
        "predict": "sample",
        "n_samples": 3,
    },
    "laplace": {
        "method": "laplace",
        "variance": None,
        "noise_scale": None,
        "predict": "sample",
        "n_samples": 3,
    },
}


@pytest.mark.parametrize("method", RESUMABLE)
def test_resume_continues_exactly_where_the_run_stopped(method):
    config = {**SMALL, "epochs": 4, **RESUMABLE[method]}
    full = fit(config)
    saved = {}

    def stop_at_two(report):
        saved["state"] = report.state_dict()
        return report.epoch == 2

    fit(config, on_epoch=stop_at_two)
    resumed = fit(config, resume=saved["state"])
    assert len(resumed.history) == 4
    for a, b in zip(full.history, resumed.history, strict=True):
        assert {k: v for k, v in a.items() if k != "train_seconds"} == pytest.approx(
            {k: v for k, v in b.items() if k != "train_seconds"}, rel=1e-12, abs=1e-12
        )


def test_resume_refuses_another_config_but_allows_more_epochs():
    saved = {}
    fit(SMALL, on_epoch=lambda r: saved.update(state=r.state_dict()))
    longer = fit({**SMALL, "epochs": 4}, resume=saved["state"])
    assert [h["epoch"] for h in longer.history] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="differs in lr, noise_scale"):
        fit({**SMALL, "lr": 0.1, "noise_scale": 0.1}, resume=saved["state"])


def test_divergence_is_an_error_not_a_silent_nan():
    with pytest.raises(FloatingPointError, match="diverged in epoch 1, step"):
        fit({**SMALL, "lr": 1e30, "epochs": 1})


def test_sampled_predictive_and_learned_noise_scale():
    result = fit(
        {
            **SMALL,
            "predict": "sample",
            "n_samples": 4,
            "learn_noise_scale": True,
            "variance_lr": 0.05,
        }
    )
    assert result.posterior.noise_scale != pytest.approx(0.05)  # it was learned
    assert result.metrics["posterior_std_mean"] == pytest.approx(result.posterior.noise_scale)


def test_bf16_autocast_trains_with_fp32_regulariser():
    result = fit({**SMALL, "bf16": True, "fisher": "per_example"})
    assert math.isfinite(result.metrics["train_sqgrad"]) and result.metrics["train_sqgrad"] > 0
    model = result.posterior.model
    x = torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = result.posterior.loss(x, torch.tensor([0, 1, 2, 0]))
    assert terms.sqgrad.dtype == torch.float32 and terms.nll.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"unknown training setting.*noise; accepted:"):
        TrainConfig.from_dict({"noise": 0.1})
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; accepted: "):
        TrainConfig(dataset="cifar")
    with pytest.raises(ValueError, match="unknown fisher 'kfac'; accepted: exact, sampled"):
        TrainConfig(fisher="kfac")
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        TrainConfig(batch_size=12.5)
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="noise_scale must be finite"):
        TrainConfig(variance="uniform", noise_scale=float("inf"))
    with pytest.raises(ValueError, match="needs noise_scale"):
        TrainConfig(variance="uniform")
    with pytest.raises(TypeError, match="bf16 must be true or false"):
        TrainConfig(bf16="yes")
    with pytest.raises(TypeError, match="unknown option"):
        fit({**SMALL, "dataset_options": {"n_samples": 10}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_cuda_without_it_is_an_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        fit({**SMALL, "device": "cuda"})


def test_a_resumed_run_may_change_how_it_is_evaluated_but_not_how_it_trains():
    states = []
    fit({**SMALL, "epochs": 2, "predict": "mean"}, on_epoch=lambda r: states.append(r.state_dict()))
    resumed = fit({**SMALL, "epochs": 3, "predict": "sample", "n_samples": 4}, resume=states[0])
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.config.predict == "sample"
    with pytest.raises(
        ValueError, match=r"differs in lr\); only compile, epochs, n_samples, predict, regul"
    ):
        fit({**SMALL, "epochs": 2, "predict": "mean", "lr": 0.5}, resume=states[0])
    # A checkpoint written before regulariser_grad and compile existed resumes with defaults.
    older = {**states[0], "config": dict(states[0]["config"])}
    del older["config"]["regulariser_grad"], older["config"]["compile"]
    assert len(fit({**SMALL, "epochs": 2, "predict": "mean"}, resume=older).history) == 2
