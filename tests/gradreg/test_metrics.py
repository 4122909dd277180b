import json
import math
import warnings

import numpy as np
import pytest
import torch

from gradreg.evaluation.metrics import (
    ReliabilityBins,
    accuracy,
    adaptive_ece,
    brier,
    classification_metrics,
    ece,
    nll,
    reliability_bins,
)

# Four binary examples: (probs, label) -> confidence, correct
#   [0.9, 0.1], 0 -> 0.9, yes
#   [0.6, 0.4], 1 -> 0.6, no
#   [0.3, 0.7], 1 -> 0.7, yes
#   [0.2, 0.8], 0 -> 0.8, no
PROBS = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
LABELS = np.array([0, 1, 1, 0])


def bin_of(conf: float, n_classes: int, n_bins: int) -> int:
    """1-based bin of a single example whose top-label confidence is `conf`."""
    rest = (1.0 - conf) / (n_classes - 1)
    probs = np.array([[conf] + [rest] * (n_classes - 1)])
    bins = reliability_bins(probs, np.array([0]), n_bins=n_bins)
    return int(np.flatnonzero(bins.count)[0]) + 1


def test_accuracy_counts_argmax_hits() -> None:
    assert accuracy(PROBS, LABELS) == 0.5


def test_accuracy_breaks_ties_towards_first_index() -> None:
    probs = np.array([[0.1, 0.45, 0.45], [0.25, 0.25, 0.5]])
    assert accuracy(probs, np.array([1, 2])) == 1.0
    assert accuracy(probs, np.array([2, 2])) == 0.5


def test_nll_hand_computed() -> None:
    # -(ln 0.9 + ln 0.4 + ln 0.7 + ln 0.2) / 4
    expected = -(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.2)) / 4
    assert nll(PROBS, LABELS) == pytest.approx(expected, rel=1e-12)


def test_nll_is_inf_when_true_label_has_zero_probability() -> None:
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nll(probs, np.array([1, 0])) == math.inf


def test_brier_hand_computed() -> None:
    # per row: 0.1²+0.1²=0.02, 0.6²+0.6²=0.72, 0.3²+0.3²=0.18, 0.8²+0.8²=1.28; mean = 2.2/4
    assert brier(PROBS, LABELS) == pytest.approx(0.55, rel=1e-12)


def test_brier_range_endpoints() -> None:
    assert brier(np.array([[1.0, 0.0]]), np.array([0])) == 0.0
    assert brier(np.array([[1.0, 0.0]]), np.array([1])) == 2.0


def test_ece_hand_computed_five_bins() -> None:
    # edges 0.2,0.4,0.6,0.8,1.0; bins are (lo, hi]
    #   bin 3 (0.4,0.6]: {0.6 wrong}            n=1, acc 0,   conf 0.6  -> gap 0.6
    #   bin 4 (0.6,0.8]: {0.7 right, 0.8 wrong} n=2, acc 0.5, conf 0.75 -> gap 0.25
    #   bin 5 (0.8,1.0]: {0.9 right}            n=1, acc 1,   conf 0.9  -> gap 0.1
    # ECE = (1*0.6 + 2*0.25 + 1*0.1) / 4 = 0.3
    assert ece(PROBS, LABELS, n_bins=5) == pytest.approx(0.3, abs=1e-12)


def test_ece_hand_computed_default_fifteen_bins() -> None:
    # 0.6=9/15, 0.7∈(10/15,11/15], 0.8=12/15, 0.9∈(13/15,14/15]: every example alone, so
    # ECE = (|0-0.6| + |1-0.7| + |0-0.8| + |1-0.9|) / 4 = 1.8 / 4
    assert ece(PROBS, LABELS) == pytest.approx(0.45, abs=1e-12)


def test_bin_boundaries_are_exact() -> None:
    assert bin_of(0.2, n_classes=5, n_bins=15) == 3
    # 0.28 = 7/25 but 0.28 * 25 rounds to 7.000000000000001, so naive ceil(conf * M) says bin 8
    assert math.ceil(0.28 * 25) == 8
    assert bin_of(0.28, n_classes=4, n_bins=25) == 7
    assert bin_of(0.5, n_classes=2, n_bins=2) == 1
    assert bin_of(1.0, n_classes=2, n_bins=15) == 15
    assert bin_of(1.0, n_classes=2, n_bins=1) == 1
    assert bin_of(0.6, n_classes=2, n_bins=5) == 3
    assert bin_of(0.61, n_classes=2, n_bins=5) == 4


def test_confidence_a_hair_above_one_goes_in_last_bin() -> None:
    bins = reliability_bins(np.array([[1.0 + 5e-7, 0.0]]), np.array([0]), n_bins=4)
    assert bins.count.tolist() == [0, 0, 0, 1]


def test_reliability_bins_contents() -> None:
    bins = reliability_bins(PROBS, LABELS, n_bins=5)
    assert bins.n_bins == 5
    np.testing.assert_array_equal(bins.lower, [0.0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_array_equal(bins.upper, [0.2, 0.4, 0.6, 0.8, 1.0])
    assert bins.count.tolist() == [0, 0, 1, 2, 1]
    assert np.issubdtype(bins.count.dtype, np.integer)
    np.testing.assert_allclose(bins.confidence, [np.nan, np.nan, 0.6, 0.75, 0.9])
    np.testing.assert_allclose(bins.accuracy, [np.nan, np.nan, 0.0, 0.5, 1.0])
    assert bins.ece == pytest.approx(0.3, abs=1e-12)


def test_reliability_bins_is_frozen() -> None:
    bins = reliability_bins(PROBS, LABELS)
    with pytest.raises(AttributeError):
        bins.count = np.zeros(15)  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        bins.count[0] = 7


def test_reliability_bins_rejects_mismatched_fields() -> None:
    with pytest.raises(ValueError, match="equal length"):
        ReliabilityBins([0.0], [1.0], [1, 2], [0.5], [0.5])


def test_adaptive_ece_uses_equal_mass_bins() -> None:
    # 10 confidences 0.55..1.00 in 3 bins of sizes 4, 3, 3 (np.array_split)
    #   {0.55,0.6,0.65,0.7} all wrong -> |0 - 0.625| = 0.625
    #   {0.75,0.8,0.85}     all right -> |1 - 0.8|   = 0.2
    #   {0.9,0.95,1.0}      all right -> |1 - 0.95|  = 0.05
    # aECE = (4*0.625 + 3*0.2 + 3*0.05) / 10 = 0.325
    conf = np.linspace(0.55, 1.0, 10)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    shuffle = np.random.default_rng(0).permutation(10)
    assert adaptive_ece(probs[shuffle], labels[shuffle], n_bins=3) == pytest.approx(0.325)


def test_adaptive_ece_hand_computed_two_bins() -> None:
    # sorted: {0.6 wrong, 0.7 right} -> |0.5-0.65|=0.15; {0.8 wrong, 0.9 right} -> 0.35
    # aECE = (2*0.15 + 2*0.35) / 4 = 0.25
    assert adaptive_ece(PROBS, LABELS, n_bins=2) == pytest.approx(0.25, abs=1e-12)


def test_adaptive_ece_with_fewer_examples_than_bins_uses_one_per_bin() -> None:
    # four singleton bins: (0.6 + 0.3 + 0.8 + 0.1) / 4
    assert adaptive_ece(PROBS, LABELS, n_bins=15) == pytest.approx(0.45, abs=1e-12)


def test_adaptive_ece_sort_is_stable_on_ties() -> None:
    # 20 confidences of 0.6 interleaved with 20 of 0.8, 4 bins of 10. Within each tie the
    # first 10 in input order are right and the last 10 wrong, so a stable sort gives
    # bins {0.6 right}, {0.6 wrong}, {0.8 right}, {0.8 wrong}:
    # aECE = (|1-0.6| + |0-0.6| + |1-0.8| + |0-0.8|) / 4 = 0.5 (any reordering mixes them)
    conf = np.tile([0.6, 0.8], 20)
    probs = np.stack([conf, 1 - conf], axis=1)
    rank_within_tie = np.repeat(np.arange(20), 2)
    labels = np.where(rank_within_tie < 10, 0, 1)
    assert adaptive_ece(probs, labels, n_bins=4) == pytest.approx(0.5, abs=1e-12)


def test_calibrated_sample_has_small_ece_and_miscalibrated_larger() -> None:
    rng = np.random.default_rng(1234)
    logits = rng.normal(scale=2.0, size=(20_000, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    cumulative = probs.cumsum(axis=1)
    labels = (rng.random((len(probs), 1)) > cumulative).sum(axis=1)
    labels = np.minimum(labels, 2)  # guards cumulative[-1] rounding just under 1
    overconfident = probs**3 / (probs**3).sum(axis=1, keepdims=True)

    assert ece(probs, labels) < 0.02
    assert adaptive_ece(probs, labels) < 0.02
    assert ece(overconfident, labels) > 0.1
    assert adaptive_ece(overconfident, labels) > 0.1


def test_ece_equals_reliability_bins_ece() -> None:
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(4), size=500)
    labels = rng.integers(0, 4, size=500)
    for n_bins in (1, 7, 15):
        assert ece(probs, labels, n_bins) == reliability_bins(probs, labels, n_bins).ece


def test_reliability_bins_counts_sum_to_n_and_dict_round_trips() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=200)
    labels = rng.integers(0, 3, size=200)
    bins = reliability_bins(probs, labels, n_bins=20)
    assert bins.count.sum() == 200
    assert np.isnan(bins.confidence).any()  # some high bins are empty at C=3, 200 samples

    data = json.loads(json.dumps(bins.to_dict(), allow_nan=False))
    assert None in data["accuracy"]
    restored = ReliabilityBins.from_dict(data)
    for field in ("lower", "upper", "count", "confidence", "accuracy"):
        np.testing.assert_array_equal(getattr(restored, field), getattr(bins, field))
    assert restored.count.dtype == bins.count.dtype
    assert restored.ece == bins.ece


def test_torch_and_numpy_inputs_agree() -> None:
    rng = np.random.default_rng(11)
    probs = rng.dirichlet(np.ones(5), size=300).astype(np.float32)
    labels = rng.integers(0, 5, size=300)
    from_numpy = classification_metrics(probs, labels)
    probs_t = torch.from_numpy(probs).requires_grad_(True)
    from_torch = classification_metrics(probs_t, torch.from_numpy(labels))
    assert from_numpy == from_torch
    assert all(type(v) is float for v in from_torch.values())


def test_low_precision_float_dtypes_are_accepted() -> None:
    probs = np.array([[0.75, 0.25], [0.5, 0.5]])
    labels = np.array([0, 1])
    expected = nll(probs, labels)
    assert nll(torch.tensor(probs, dtype=torch.bfloat16), torch.tensor(labels)) == expected
    assert nll(probs.astype(np.float16), labels.astype(np.uint8)) == expected


def test_classification_metrics_keys_and_values() -> None:
    metrics = classification_metrics(PROBS, LABELS, prefix="val_")
    assert list(metrics) == ["val_accuracy", "val_nll", "val_ece", "val_aece", "val_brier"]
    assert metrics["val_accuracy"] == accuracy(PROBS, LABELS)
    assert metrics["val_nll"] == nll(PROBS, LABELS)
    assert metrics["val_ece"] == ece(PROBS, LABELS)
    assert metrics["val_aece"] == adaptive_ece(PROBS, LABELS)
    assert metrics["val_brier"] == brier(PROBS, LABELS)
    assert set(classification_metrics(PROBS, LABELS)) == {"accuracy", "nll", "ece", "aece", "brier"}


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.array([0.5, 0.5]), np.array([0]), r"2-D.*shape \(2,\)"),
        (np.ones((3, 1)), np.array([0, 0, 0]), r"C >= 2.*\(3, 1\)"),
        (np.zeros((0, 2)), np.zeros(0, dtype=int), r"N >= 1.*\(0, 2\)"),
        (PROBS, LABELS[:, None], r"labels must be 1-D.*\(4, 1\)"),
        (PROBS, LABELS[:3], r"labels has 3 entries but probs has N=4"),
        (PROBS, np.array([0, 1, 2, 0]), r"\[0, 2\), got label 2 at index 2"),
        (PROBS, np.array([0, -1, 1, 0]), r"got label -1 at index 1"),
        (np.array([[0.5, 0.5], [np.nan, 1.0]]), np.array([0, 0]), r"finite, row 1"),
        (np.array([[0.5, 0.5], [np.inf, 0.0]]), np.array([0, 0]), r"finite, row 1"),
        (np.array([[1.1, -0.1]]), np.array([0]), r"\[0, 1\].*min -0.1 and max 1.1"),
        (np.array([[0.5, 0.5], [0.6, 0.5]]), np.array([0, 0]), r"worst row 1 sums to 1.1"),
    ],
)
def test_invalid_inputs_raise_value_error(probs, labels, match) -> None:
    with pytest.raises(ValueError, match=match):
        classification_metrics(probs, labels)


def test_small_rounding_is_tolerated() -> None:
    probs = np.array([[1.0 + 5e-7, -5e-7], [0.5 + 5e-5, 0.5]])
    assert nll(probs, np.array([1, 0])) == math.inf


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (PROBS, LABELS.astype(float), "labels must have an integer dtype, got float64"),
        (PROBS, LABELS.astype(bool), "labels must have an integer dtype, got bool"),
        (PROBS, torch.tensor([0.0, 1.0, 1.0, 0.0]), "integer dtype, got float64"),
        (np.array([[1, 0]]), np.array([0]), "probs must have a floating-point dtype"),
    ],
)
def test_wrong_dtypes_raise_type_error(probs, labels, match) -> None:
    with pytest.raises(TypeError, match=match):
        accuracy(probs, labels)


@pytest.mark.parametrize("function", [ece, adaptive_ece, reliability_bins])
def test_n_bins_validation(function) -> None:
    with pytest.raises(TypeError, match=r"positive int, got 2.5"):
        function(PROBS, LABELS, n_bins=2.5)
    with pytest.raises(TypeError, match=r"positive int, got True"):
        function(PROBS, LABELS, n_bins=True)
    with pytest.raises(ValueError, match=r"positive int, got 0"):
        function(PROBS, LABELS, n_bins=0)
    with pytest.raises(ValueError, match=r"positive int, got -3"):
        function(PROBS, LABELS, n_bins=-3)
    assert function(PROBS, LABELS, n_bins=np.int64(5)) is not None


def test_pooled_bins_equal_the_bins_of_the_concatenation():
    from gradreg.evaluation.metrics import pool_reliability_bins, reliability_bins

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=60)
    labels = rng.integers(0, 4, size=60)
    parts = [reliability_bins(probs[:25], labels[:25]), reliability_bins(probs[25:], labels[25:])]
    pooled = pool_reliability_bins(parts)
    whole = reliability_bins(probs, labels)
    np.testing.assert_array_equal(pooled.count, whole.count)
    np.testing.assert_allclose(pooled.confidence, whole.confidence, equal_nan=True)
    np.testing.assert_allclose(pooled.accuracy, whole.accuracy, equal_nan=True)
    assert pooled.ece == pytest.approx(whole.ece)
    with pytest.raises(ValueError, match="identical edges"):
        pool_reliability_bins([whole, reliability_bins(probs, labels, n_bins=5)])
