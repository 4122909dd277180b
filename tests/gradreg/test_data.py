import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_blobs

from gradreg.data import (
    Dataset,
    available_datasets,
    dataset_options,
    load_dataset,
    splits,
    synthetic,
)

SMALL_DATASETS = ["digits", "iris", "wine", "breast_cancer", "moons", "blobs"]
EXPECTED = {
    "digits": (1797, 10, (1, 8, 8)),
    "iris": (150, 3, (4,)),
    "wine": (178, 3, (13,)),
    "breast_cancer": (569, 2, (30,)),
    "moons": (1000, 2, (2,)),
    "blobs": (1000, 3, (2,)),
}


def rows(x: torch.Tensor) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(len(x), -1).numpy()}


def all_rows(dataset: Dataset) -> set[bytes]:
    return rows(dataset.x_train) | rows(dataset.x_val) | rows(dataset.x_test)


def check_shapes_and_labels(dataset: Dataset, n_total: int, n_classes: int, shape: tuple) -> None:
    assert dataset.n_classes == n_classes
    assert dataset.input_shape == shape
    assert dataset.n_train + dataset.n_val + dataset.n_test == n_total
    for x, y in [
        (dataset.x_train, dataset.y_train),
        (dataset.x_val, dataset.y_val),
        (dataset.x_test, dataset.y_test),
    ]:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(y), *shape)
        assert y.min() >= 0 and y.max() < n_classes
        assert set(y.tolist()) == set(range(n_classes))


def test_available_datasets_lists_all_with_descriptions():
    names = available_datasets()
    assert set(names) == {*SMALL_DATASETS, "mnist1d", "mnist", "fashion_mnist", "cifar10", "file"}
    assert all(isinstance(text, str) and text for text in names.values())


@pytest.mark.parametrize("name", SMALL_DATASETS)
def test_shapes_dtypes_and_split_sizes(name):
    n_total, n_classes, shape = EXPECTED[name]
    dataset = load_dataset(name)
    check_shapes_and_labels(dataset, n_total, n_classes, shape)
    assert dataset.n_test == round(0.2 * n_total)
    assert dataset.n_val == round(0.15 * n_total)
    assert dataset.summary() == {
        "name": name,
        "n_train": dataset.n_train,
        "n_val": dataset.n_val,
        "n_test": dataset.n_test,
        "n_classes": n_classes,
        "input_shape": shape,
        "class_names": [str(c) for c in range(n_classes)],
        "source": {"name": name, "options": dataset_options(name)},
    }


@pytest.mark.parametrize("name", ["digits", "wine", "breast_cancer", "moons", "blobs"])
def test_splits_are_disjoint(name):
    # these datasets have no duplicate rows, so equal rows mean a leaked example
    dataset = load_dataset(name)
    train, val, test = rows(dataset.x_train), rows(dataset.x_val), rows(dataset.x_test)
    assert len(train) == dataset.n_train and len(val) == dataset.n_val
    assert not train & val and not train & test and not val & test


def test_stratification_preserves_class_proportions():
    _, labels = load_digits(return_X_y=True)
    overall = np.bincount(labels) / len(labels)
    dataset = load_dataset("digits", split_seed=3)
    for y in [dataset.y_train, dataset.y_val, dataset.y_test]:
        proportions = np.bincount(y.numpy(), minlength=10) / len(y)
        assert np.abs(proportions - overall).max() < 0.01


def test_same_split_seed_gives_identical_splits_and_other_seed_differs():
    first, again = load_dataset("wine", split_seed=7), load_dataset("wine", split_seed=7)
    other = load_dataset("wine", split_seed=8)
    for field in ["x_train", "y_train", "x_val", "y_val", "x_test", "y_test"]:
        assert torch.equal(getattr(first, field), getattr(again, field))
    assert rows(first.x_test) != rows(other.x_test)


def test_data_seed_changes_synthetic_data_but_split_seed_does_not():
    base = load_dataset("moons", split_seed=0)
    resplit = load_dataset("moons", split_seed=1)
    regenerated = load_dataset("moons", data_seed=1)
    assert rows(base.x_test) != rows(resplit.x_test)
    assert all_rows(regenerated) != all_rows(base)


def test_options_reach_the_generator():
    dataset = load_dataset("blobs", n_samples=300, n_classes=4, n_features=5, cluster_std=0.5)
    check_shapes_and_labels(dataset, 300, 4, (5,))
    noisy = load_dataset("moons", n_samples=200, noise=0.0)
    assert noisy.n_train + noisy.n_val + noisy.n_test == 200


@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer", "moons", "blobs"])
def test_tabular_standardised_per_feature_with_train_stats(name):
    dataset = load_dataset(name)
    assert dataset.x_train.mean(0).abs().max() < 1e-5
    assert (dataset.x_train.std(0, unbiased=False) - 1).abs().max() < 1e-4
    # the test split is transformed with train stats, not re-standardised
    assert dataset.x_test.mean(0).abs().max() > 1e-3


def test_one_affine_map_standardises_every_split():
    raw, _ = make_blobs(n_samples=1000, centers=3, n_features=2, cluster_std=1.0, random_state=0)
    dataset = load_dataset("blobs", split_seed=5)
    combined = torch.cat([dataset.x_train, dataset.x_val, dataset.x_test]).double().numpy()
    for feature in range(2):
        # the map is increasing, so sorting pairs each raw value with its standardised one
        source, target = np.sort(raw[:, feature]), np.sort(combined[:, feature])
        slope, intercept = np.polyfit(source, target, 1)
        assert np.abs(slope * source + intercept - target).max() < 1e-4
        train_raw = (dataset.x_train[:, feature].double().numpy() - intercept) / slope
        assert slope == pytest.approx(1 / train_raw.std(), rel=1e-4)
        assert intercept == pytest.approx(-train_raw.mean() / train_raw.std(), abs=1e-4)


def test_digits_standardised_globally_and_constant_pixels_stay_finite():
    dataset = load_dataset("digits")
    assert torch.isfinite(dataset.x_train).all()
    assert abs(dataset.x_train.mean().item()) < 1e-5
    assert dataset.x_train.std(unbiased=False).item() == pytest.approx(1, abs=1e-4)
    # one global mean/std: the always-blank pixel stays one shared value, not zero per pixel
    corner = torch.cat([dataset.x_train, dataset.x_test])[:, 0, 0, 0]
    assert torch.all(corner == corner[0]) and corner[0] < -0.5


def test_mnist1d_generated_cached_and_reloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADREG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(synthetic, "_MNIST1D_MEMO", {})
    np.random.seed(123)
    numpy_state = np.random.get_state()[1].copy()

    dataset = load_dataset("mnist1d")
    check_shapes_and_labels(dataset, 5000, 10, (1, 40))
    assert abs(dataset.x_train.mean().item()) < 1e-4
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    cached = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(cached) == 1
    assert not [p for p in tmp_path.iterdir() if p not in cached]  # no temp files left

    def regenerate(_args):
        raise AssertionError("mnist1d should have been read from the cache")

    monkeypatch.setattr(synthetic, "_MNIST1D_MEMO", {})
    monkeypatch.setattr(synthetic, "_generate_mnist1d", regenerate)
    reloaded = load_dataset("mnist1d")
    for field in ["x_train", "y_train", "x_val", "y_val", "x_test", "y_test"]:
        assert torch.equal(getattr(dataset, field), getattr(reloaded, field))
    # memoised in-process: even the cache file is no longer needed
    cached[0].unlink()
    assert torch.equal(load_dataset("mnist1d").x_test, dataset.x_test)


def test_mnist1d_cache_is_shared_and_one_that_cannot_be_written_is_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADREG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(synthetic, "_MNIST1D_MEMO", {})
    x, y = synthetic.load_mnist1d(data_seed=3, n_samples=60)
    (cached,) = (tmp_path / "cache").glob("mnist1d-*.npz")
    assert stat.S_IMODE(cached.stat().st_mode) == 0o644  # others on the machine reuse it

    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("GRADREG_CACHE_DIR", str(blocked))
    monkeypatch.setattr(synthetic, "_MNIST1D_MEMO", {})
    with pytest.warns(UserWarning, match=r"could not cache mnist1d at .*not_a_folder"):
        again = synthetic.load_mnist1d(data_seed=3, n_samples=60)
    assert np.array_equal(again[0], x) and np.array_equal(again[1], y)


def test_the_split_module_imports_no_torch():
    # the sweep spec reads the split defaults from it
    check = "import sys, gradreg.data.splits; print('torch' in sys.modules)"
    found = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "False"


@pytest.mark.parametrize("test_fraction", [None, 0.2])
def test_splits_are_sklearns_stratified_splits_of_the_seed(test_fraction):
    """The indices saved sweeps were trained on: a test share first (when the dataset has no
    test set), then validation from the rest, each by sklearn with the split seed."""
    from sklearn.model_selection import train_test_split

    labels = np.random.default_rng(0).integers(0, 3, 200)
    train, val, *test = splits.stratified_split(labels, 3, 7, 0.15, test_fraction)
    rest = np.arange(200)
    if test_fraction is not None:
        rest, expected_test = train_test_split(rest, test_size=40, stratify=labels, random_state=7)
        assert np.array_equal(test[0], expected_test)
    else:
        assert test == []
    expected = train_test_split(rest, test_size=30, stratify=labels[rest], random_state=7)
    assert np.array_equal(train, expected[0]) and np.array_equal(val, expected[1])


def test_unknown_dataset_lists_available():
    with pytest.raises(ValueError, match=r"unknown dataset 'no_such_set'.*digits.*mnist1d"):
        load_dataset("no_such_set")
    with pytest.raises(ValueError, match=r"unknown dataset 'no_such_set'.*digits.*mnist1d"):
        dataset_options("no_such_set")


def test_dataset_options_are_those_load_dataset_accepts():
    assert dataset_options("digits") == {}
    assert set(dataset_options("moons")) == {"data_seed", "n_samples", "noise"}
    assert dataset_options("cifar10") == {"data_dir": None}
    assert load_dataset("moons", **dataset_options("moons")).n_train > 0


@pytest.mark.parametrize(
    ("name", "options", "pattern"),
    [
        ("digits", {"noise": 0.1}, r"noise for dataset 'digits'; accepted: none"),
        ("moons", {"n_classes": 3}, r"n_classes.*accepted: data_seed, n_samples, noise"),
        ("mnist1d", {"seed": 1}, r"seed.*accepted: data_seed"),
    ],
)
def test_unknown_option_lists_accepted(name, options, pattern):
    with pytest.raises(TypeError, match=pattern):
        load_dataset(name, **options)


@pytest.mark.parametrize(
    ("options", "error", "pattern"),
    [
        ({"n_samples": 0}, ValueError, r"n_samples must be >= 1, got 0"),
        ({"n_classes": 1}, ValueError, r"n_classes must be >= 2"),
        ({"cluster_std": -1.0}, ValueError, r"cluster_std must be finite and > 0"),
        ({"n_samples": 10.5}, TypeError, r"n_samples must be an int"),
    ],
)
def test_bad_option_values(options, error, pattern):
    with pytest.raises(error, match=pattern):
        load_dataset("blobs", **options)


@pytest.mark.parametrize(
    ("fractions", "pattern"),
    [
        ({"val_fraction": 0.0}, r"val_fraction must be in \(0, 1\), got 0.0"),
        ({"test_fraction": 1.0}, r"test_fraction must be in \(0, 1\), got 1.0"),
        ({"test_fraction": -0.2}, r"test_fraction must be in \(0, 1\)"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction must be < 1"),
    ],
)
def test_bad_fractions(fractions, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_dataset("iris", **fractions)


def test_bad_split_seed():
    with pytest.raises(TypeError, match="split_seed must be an int"):
        load_dataset("iris", split_seed="0")
    with pytest.raises(ValueError, match="split_seed must be >= 0"):
        load_dataset("iris", split_seed=-1)


def test_split_with_fewer_examples_than_classes():
    with pytest.raises(ValueError, match=r"val split would hold 3 of 20 examples.*10 classes"):
        load_dataset("blobs", n_samples=20, n_classes=10)
    with pytest.raises(ValueError, match=r"train split would hold 1 of 150.*3 classes"):
        load_dataset("iris", val_fraction=0.49, test_fraction=0.5)


def test_rare_class_is_rejected():
    labels = np.array([0] * 100 + [1] * 2)
    with pytest.raises(ValueError, match=r"class 1 has only 2 example"):
        splits.stratified_split(labels, 2, 0, 0.15, 0.2)


def test_split_leaving_a_class_out_of_train_is_rejected():
    labels = np.array([0] * 1000 + [1] * 3)
    with pytest.raises(ValueError, match=r"train split would hold no example of class\(es\) \[1\]"):
        splits.stratified_split(labels, 2, 0, 0.45, 0.45)
