"""A user's loader by entry point: the contract it keeps (every violation named), the split of
its one pair as a file dataset's, standardisation with the training split's statistics, and
its provenance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradreg.data import load_dataset
from gradreg.data.user_loaders import arrays_digest
from gradreg.train import fit
from gradreg.user_code import UserCodeError, code_path
from tests.helpers.user_code import LOAD, user_config, write_user_code

CASES = """
import numpy as np
import torch


def pair(n=12, shape=(1, 16), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32), np.arange(n) % classes


def splits(**changes):
    result = {"train": pair(12), "test": pair(6, seed=1), "class_names": ["a", "b", "c"]}
    result.update(changes)
    return result


def none():
    return None


def three():
    return [1, 2, 3]


def unknown_key():
    return splits(validation=pair(3))


def no_test():
    result = splits()
    del result["test"]
    return result


def split_not_a_pair():
    return splits(train={"x": 1, "y": 2})


def x_a_list():
    return splits(train=([[0.0, 1.0]] * 12, np.arange(12) % 3))


def x_complex():
    x, y = pair()
    return splits(train=(x.astype(np.complex64), y))


def x_text():
    return splits(train=(np.full((12, 2), "a"), np.arange(12) % 3))


def x_rank_one():
    return splits(train=(np.zeros(12), np.arange(12) % 3))


def x_empty():
    return splits(val=(np.zeros((0, 1, 16)), np.zeros(0, dtype=int)))


def x_nan():
    x, y = pair(6, seed=1)
    x[0, 0, :2] = [np.nan, np.inf]
    return splits(test=(x, y))


def y_rank_two():
    x, y = pair()
    return splits(train=(x, y[:, None]))


def lengths_differ():
    x, y = pair()
    return splits(train=(x, y[:-1]))


def pool_lengths_differ():
    x, y = pair(30)
    return x, y[:29]


def shapes_differ():
    return splits(test=pair(6, shape=(1, 8)))


def labels_not_whole():
    x, y = pair()
    return splits(train=(x, y + 0.5))


def labels_text():
    x, y = pair()
    return splits(train=(x, y.astype(str)))


def labels_negative():
    x, y = pair()
    return splits(train=(x, y - 1))


def negative_unnamed():
    x, y = pair()
    return {"train": (x, y - 1), "test": pair(6, seed=1)}


def class_missing_in_train():
    x, y = pair()
    y[y == 1] = 2
    return {"train": (x, y), "test": pair(6, seed=1)}


def named_class_missing_in_train():
    x, y = pair()
    y[y == 2] = 0
    return splits(train=(x, y))


def test_label_outside():
    x, y = pair(6, seed=1)
    y[-1] = 3
    return splits(test=(x, y))


def one_class():
    x, _ = pair()
    return {"train": (x, np.zeros(12, dtype=int)), "test": pair(6, seed=1)}


def names_text():
    return splits(class_names="abc")


def names_not_strings():
    return splits(class_names=["a", 2, "c"])


def names_twice():
    return splits(class_names=["a", "b", "a"])


def standardise_text():
    return splits(standardise="no")


def tensors(dtype="float32"):
    x, y = pair(30)
    test_x, test_y = pair(6, seed=1)
    to = getattr(torch, dtype)
    return {
        "train": (torch.from_numpy(x).to(to), torch.from_numpy(y)),
        "test": (torch.from_numpy(test_x).to(to), torch.from_numpy(test_y).double()),
    }


def with_val(rank=3, standardise=True):
    shape = {2: (5,), 3: (2, 8), 4: (2, 3, 3)}[rank]
    result = splits(
        train=pair(12, shape=shape),
        val=pair(6, shape=shape, seed=2),
        test=pair(6, shape=shape, seed=1),
    )
    result["train"] = (result["train"][0] * 3 + 5, result["train"][1])
    result["standardise"] = standardise
    return result


def from_file(path, pool=True):
    with np.load(path) as arrays:
        if pool:
            return arrays["x"], arrays["y"]
        return {"train": (arrays["x"], arrays["y"]), "test": (arrays["x_test"], arrays["y_test"])}


def small_pool():
    return pair(8)
"""

LOADER = "data loader 'tdata.cases:{}'"


@pytest.fixture
def code(tmp_path):
    directory = write_user_code(tmp_path / "src", **{"tdata/cases.py": CASES})
    with code_path(directory):
        yield directory


def load(case, **settings):
    return load_dataset(f"tdata.cases:{case}", **settings)


# ---------------------------------------------------------------- the contract


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("none", r"returned None; a loader returns one pair \(x, y\) of all the examples, or a "),
        ("three", r"returned a list of 3 item\(s\); a loader returns one pair"),
        (
            "unknown_key",
            r"returned a mapping with unknown key\(s\) 'validation'; accepted: train, val, test, "
            r"class_names, standardise$",
        ),
        ("no_test", r"returned a mapping without 'test'; a mapping holds 'train' and 'test'"),
        ("split_not_a_pair", r"'train' is a dict; each split is a pair \(x, y\)"),
        (
            "x_a_list",
            r"x of split 'train' is a list of 12 item\(s\); give a numpy array or a torch tensor",
        ),
        ("x_complex", r"x of split 'train' has dtype complex64; inputs must be real or integer"),
        ("x_text", r"x of split 'train' has dtype <U1; inputs must be real or integer numbers"),
        ("x_rank_one", r"x of split 'train' has shape \(12,\); x is \(N, \*input_shape\), rank 2"),
        ("x_empty", r"x of split 'val' holds no examples"),
        ("x_nan", r"x of split 'test' holds 2 NaN or infinite value\(s\)"),
        ("y_rank_two", r"y of split 'train' has shape \(12, 1\); labels are one integer per exa"),
        ("lengths_differ", r"split 'train': x holds 12 examples but y holds 11 labels; give one"),
        ("pool_lengths_differ", r"the pool: x holds 30 examples but y holds 29 labels"),
        (
            "shapes_differ",
            r"x of split 'test' holds examples of shape \(1, 8\), split 'train' of shape "
            r"\(1, 16\); every split needs the same input shape",
        ),
        ("labels_not_whole", r"y of split 'train' holds labels that are not whole numbers \(e.g."),
        ("labels_text", r"y of split 'train' must hold integer class labels 0..C-1, got dtype <U"),
        ("labels_negative", r"y of split 'train' holds label -1, outside 0..2 \(the 3 classes"),
        (
            "class_missing_in_train",
            r"y of split 'train' has no example of 1 class\(es\) \(1\): labels must be 0..C-1",
        ),
        (
            "named_class_missing_in_train",
            r"split 'train' has no example of 1 class\(es\): 2 \('c'\); every class of "
            r"'class_names' \(3\) needs an example in train",
        ),
        ("test_label_outside", r"y of split 'test' holds label 3, outside 0..2 \(the 3 classes"),
        (
            "negative_unnamed",
            r"y of split 'train' holds negative labels \(e.g. -1\); labels are integers 0..C-1",
        ),
        ("one_class", r"y of split 'train' holds one class only; a classifier needs at least 2"),
        ("names_text", r"'class_names' must be a sequence of strings, got 'abc'"),
        ("names_not_strings", r"'class_names' must hold strings, got 2"),
        ("names_twice", r"'class_names' names 'a' more than once"),
        ("standardise_text", r"'standardise' must be true or false, got 'no'"),
    ],
)
def test_every_violation_of_the_contract_is_named(code, case, message):
    with pytest.raises(UserCodeError, match=message) as error:
        load(case)
    assert str(error.value).startswith(LOADER.format(case) + ": ")
    assert error.value.kind == "result" and error.value.role == "data loader"


def test_test_fraction_stays_unset_when_the_loader_gives_its_test_split(code):
    with pytest.raises(ValueError) as error:
        load("splits", test_fraction=0.2)
    assert str(error.value) == (
        "data loader 'tdata.cases:splits' returns its own test split, which is used as the test "
        "set; leave test_fraction unset (got 0.2)"
    )


def test_a_pool_too_small_to_split_says_which_loader(code):
    with pytest.raises(ValueError, match=r"^data loader 'tdata.cases:small_pool': the val split "):
        load("small_pool")


def test_tensors_and_whole_float_labels_are_accepted(code):
    data = load("tensors")
    assert data.input_shape == (1, 16) and data.n_classes == 3 and data.n_test == 6
    assert data.n_train + data.n_val == 30
    assert data.y_test.dtype == torch.int64
    # bfloat16 has no numpy dtype: it is read as float32
    assert load("tensors", dtype="bfloat16").input_shape == (1, 16)


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_the_pool_is_split_as_a_file_dataset_is(code, tmp_path, shape):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, *shape)) * 4 + 1
    y = np.arange(90) % 3
    np.savez(tmp_path / "pool.npz", x=x, y=y)
    for seed in (0, 5):
        settings = {"split_seed": seed, "val_fraction": 0.2, "test_fraction": 0.3}
        mine = load("from_file", path=str(tmp_path / "pool.npz"), **settings)
        files = load_dataset("file", path="pool.npz", data_dir=str(tmp_path), **settings)
        _same_splits(mine, files)
    assert mine.n_test == 27 and mine.n_val == 18
    assert mine.transform.mode == ("feature" if len(shape) == 1 else "channel")


def test_the_train_split_is_carved_as_a_file_datasets_is(code, tmp_path):
    rng = np.random.default_rng(4)
    x, x_test = rng.normal(size=(60, 1, 4, 4)), rng.normal(size=(20, 1, 4, 4))
    y, y_test = np.arange(60) % 4, np.arange(20) % 4
    np.savez(tmp_path / "own.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    mine = load("from_file", path=str(tmp_path / "own.npz"), pool=False, split_seed=2)
    files = load_dataset("file", path="own.npz", data_dir=str(tmp_path), split_seed=2)
    _same_splits(mine, files)
    assert (mine.n_train, mine.n_val, mine.n_test) == (51, 9, 20)


def _same_splits(mine, files):
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(mine, f"x_{split}"), getattr(files, f"x_{split}"))
        assert torch.equal(getattr(mine, f"y_{split}"), getattr(files, f"y_{split}"))
    assert mine.transform == files.transform and mine.class_names == files.class_names


def test_a_given_validation_split_is_kept(code):
    data = load("with_val", val_fraction=0.5, split_seed=9)  # both unused
    assert (data.n_train, data.n_val, data.n_test) == (12, 6, 6)
    assert data.source["splits"] == ["train", "val", "test"]


# ---------------------------------------------------------------- standardisation


def _expected_splits(rank):
    """The arrays `with_val` returns, rebuilt here."""
    shape = {2: (5,), 3: (2, 8), 4: (2, 3, 3)}[rank]
    arrays = {}
    for split, n, seed in (("train", 12, 0), ("val", 6, 2), ("test", 6, 1)):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, *shape)).astype(np.float32)
        arrays[split] = (x * 3 + 5 if split == "train" else x).astype(np.float64)
    return arrays


def test_rank_two_inputs_are_standardised_per_feature_with_train_statistics(code):
    data = load("with_val", rank=2)
    raw = _expected_splits(2)
    mean, std = raw["train"].mean(axis=0), raw["train"].std(axis=0)
    assert data.transform.mode == "feature" and data.transform.dtype == "float64"
    for split in ("train", "val", "test"):
        expected = (raw[split] - mean) / std
        np.testing.assert_allclose(getattr(data, f"x_{split}").double(), expected, rtol=1e-6)
    np.testing.assert_allclose(data.transform.mean.ravel(), mean, rtol=1e-6)


@pytest.mark.parametrize("rank", [3, 4])
def test_higher_ranks_are_standardised_per_channel(code, rank):
    data = load("with_val", rank=rank)
    raw = _expected_splits(rank)
    axes = (0, *range(2, rank))
    mean = raw["train"].mean(axis=axes, keepdims=True)[0]
    std = raw["train"].std(axis=axes, keepdims=True)[0]
    assert data.transform.mode == "channel" and data.transform.dtype == "float32"
    for split in ("train", "val", "test"):
        x = getattr(data, f"x_{split}").double().numpy()
        np.testing.assert_allclose(x, (raw[split] - mean) / std, rtol=1e-5, atol=1e-5)
    train = data.x_train.double()
    channel_means = train.mean(dim=axes)
    np.testing.assert_allclose(channel_means.numpy(), 0.0, atol=1e-6)
    # the saved map is the loader's: raw inputs in, the network's inputs out
    np.testing.assert_allclose(
        data.transform(raw["test"]).double().numpy(), data.x_test.double().numpy(), atol=1e-6
    )


def test_standardise_false_keeps_the_inputs_and_saves_the_identity(code):
    data = load("with_val", rank=3, standardise=False)
    raw = _expected_splits(3)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(data, f"x_{split}").double().numpy(), raw[split])
    assert data.source["standardise"] is False
    np.testing.assert_array_equal(data.transform(raw["val"]).double().numpy(), raw["val"])


# ---------------------------------------------------------------- provenance


def test_the_source_names_the_entry_point_its_options_and_the_arrays_digest(code):
    data = load_dataset(LOAD, n=60, seed=1)
    source = data.summary()["source"]
    assert {k: source[k] for k in ("name", "entry_point", "options", "form", "splits")} == {
        "name": LOAD,
        "entry_point": LOAD,
        "options": {"n": 60, "seed": 1},
        "form": "splits",
        "splits": ["train", "test"],
    }
    assert source["n_examples"] == 60 and source["x_shape"] == [60, 1, 16]
    assert source["class_names"] == ["low", "mid", "high"] and source["standardise"] is True
    from tdata.waves import signals  # the test's own copy of what the loader returned

    x, y = signals(60, 16, 1)
    expected = arrays_digest({"train": (x[:45], y[:45]), "test": (x[45:], y[45:])})
    assert source["digest"] == expected
    assert load_dataset(LOAD, n=60, seed=1).source["digest"] == expected
    assert load_dataset(LOAD, n=60, seed=2).source["digest"] != expected
    pool = load_dataset(LOAD, n=60, seed=1, form="pool").source
    assert pool["form"] == "pool" and pool["splits"] == []
    assert pool["digest"] == arrays_digest({"pool": (x, y)})


# ---------------------------------------------------------------- training


def test_a_user_network_with_layer_norm_trains_on_a_users_loader(code):
    result = fit(user_config(dataset_options={"n": 120}, epochs=2, lr=0.03))
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.history[1]["train_nll"] < result.history[0]["train_nll"]
    assert result.history[-1]["val_accuracy"] > 0.6  # 3 classes shifted by 1σ: learnt
    assert result.dataset["class_names"] == ["low", "mid", "high"]
    assert result.dataset["source"]["entry_point"] == LOAD
    assert isinstance(result.posterior.model.block.norm, torch.nn.LayerNorm)
