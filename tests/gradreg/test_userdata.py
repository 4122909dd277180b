"""The file dataset: the user's .npz, CSV, Parquet and image folders, their checks, the cache,
and the input transform that takes raw inputs to what the network was trained on."""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits, load_wine

from gradreg.cli.main import main
from gradreg.data import FileDatasetError, check_file_dataset, load_dataset, splits, userfiles
from gradreg.data.transform import InputTransform
from gradreg.train import fit
from tests.helpers.datafiles import make_idx_dataset

ANIMALS = ["zebra", "ant", "moth"]  # sorted: ant, moth, zebra


@pytest.fixture(autouse=True)
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GRADREG_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(userfiles, "_CACHE", OrderedDict())
    return tmp_path


def animal_table(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Feature a is the label's index in sorted order, b is noise; rows in a seeded order."""
    rng = np.random.default_rng(seed)
    animals = [ANIMALS[i % 3] for i in range(n)]
    rank = {name: i for i, name in enumerate(sorted(ANIMALS))}
    frame = pd.DataFrame(
        {
            "a": [float(rank[name]) for name in animals],
            "b": rng.normal(size=n),
            "label": animals,
        }
    )
    return frame.iloc[rng.permutation(n)].reset_index(drop=True)


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def write_image_folder(
    root: Path, mode: str = "L", size: tuple[int, int] = (6, 5), per_class: int = 8
) -> Path:
    rng = np.random.default_rng(0)
    for name in ("dog", "cat"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i:03d}.png")
    return root


def split_indices(labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, ...]:
    """The loader's default split (split_seed 0, val 0.15, test 0.2)."""
    return splits.stratified_split(labels, n_classes, 0, 0.15, 0.2)


# ---------------------------------------------------------------- each format


def test_csv_with_categorical_labels_maps_them_in_sorted_order(data_root):
    animal_table().to_csv(data_root / "animals.csv", index=False)
    dataset = load_dataset("file", path="animals.csv")
    assert dataset.class_names == ("ant", "moth", "zebra")
    assert dataset.n_classes == 3 and dataset.input_shape == (2,)
    assert (dataset.n_train, dataset.n_val, dataset.n_test) == (39, 9, 12)
    # feature a holds the label's sorted rank: undo the standardisation and compare
    for x, y in [(dataset.x_train, dataset.y_train), (dataset.x_test, dataset.y_test)]:
        raw_a = x[:, 0].double().numpy() * dataset.transform.scale[0, 0]
        raw_a += dataset.transform.mean[0, 0]
        assert np.array_equal(np.round(raw_a).astype(int), y.numpy())
    source = dataset.source
    assert source["format"] == "csv" and source["label"] == "label"
    assert source["path"] == str(data_root / "animals.csv")
    assert source["n_examples"] == 60 and source["x_shape"] == [60, 2]
    assert source["class_names"] == ["ant", "moth", "zebra"]
    assert len(source["digest"]) == 64

    # the same rows in another order: the same classes, whatever order they first appear in
    animal_table(seed=1).to_csv(data_root / "again.csv", index=False)
    assert load_dataset("file", path="again.csv").class_names == dataset.class_names


def test_parquet_with_integer_labels_in_a_named_column(data_root):
    frame = animal_table().rename(columns={"label": "target"})
    frame["target"] = frame["a"].astype(int)
    frame.to_parquet(data_root / "table.parquet")
    dataset = load_dataset("file", path="table.parquet", label="target", test_fraction=0.25)
    assert dataset.class_names == ("0", "1", "2") and dataset.input_shape == (2,)
    assert dataset.n_test == 15
    assert dataset.source["format"] == "parquet" and dataset.source["label"] == "target"
    # a format named explicitly wins over the suffix
    (data_root / "table.bin").write_bytes((data_root / "table.parquet").read_bytes())
    again = load_dataset("file", path="table.bin", format="parquet", label="target")
    assert again.class_names == ("0", "1", "2")


@pytest.mark.parametrize(
    ("shape", "input_shape", "mode"),
    [((7,), (7,), "feature"), ((6, 5), (1, 6, 5), "channel"), ((3, 4, 5), (3, 4, 5), "channel")],
)
def test_npz_shapes_decide_tabular_or_images(data_root, shape, input_shape, mode):
    labels = np.arange(60) % 3
    write_npz(data_root / "arrays.npz", x=images(60, shape), y=labels)
    dataset = load_dataset("file", path="arrays.npz")
    assert dataset.input_shape == input_shape and dataset.x_train.shape[1:] == input_shape
    assert dataset.transform.mode == mode and dataset.transform.raw_shape == shape
    assert dataset.class_names == ("0", "1", "2")
    if mode == "channel":  # images: one mean and scale per channel, as cifar10
        assert dataset.transform.mean.shape == (1, input_shape[0], 1)
        per_channel = dataset.x_train.transpose(0, 1).reshape(input_shape[0], -1)
        assert per_channel.mean(1).abs().max() < 1e-5


def test_npz_with_its_own_test_split(data_root):
    x, y = images(50, (2, 3, 3)), np.arange(50) % 2
    x_test, y_test = images(11, (2, 3, 3), seed=1), np.arange(11) % 2
    write_npz(data_root / "split.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    dataset = load_dataset("file", path="split.npz", val_fraction=0.2)
    assert (dataset.n_train, dataset.n_val, dataset.n_test) == (40, 10, 11)
    assert torch.equal(dataset.y_test, torch.from_numpy(y_test))
    assert dataset.source["n_examples"] == 61 and dataset.source["x_shape"] == [61, 2, 3, 3]
    message = r"holds x_test and y_test, its own test split.*leave test_fraction unset \(got 0.2\)"
    with pytest.raises(FileDatasetError, match=message) as caught:
        load_dataset("file", path="split.npz", test_fraction=0.2)
    assert caught.value.field == "test_fraction"


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3)])
def test_image_folder_reads_classes_in_folder_order(data_root, mode, channels):
    write_image_folder(data_root / "pets", mode)
    dataset = load_dataset("file", path="pets", val_fraction=0.25, test_fraction=0.25)
    assert dataset.class_names == ("cat", "dog")
    assert dataset.input_shape == (channels, 5, 6)
    assert dataset.transform.raw_shape == (channels, 5, 6)
    assert dataset.source["format"] == "image_folder" and dataset.source["n_examples"] == 16
    # raw units are the pixels, 0..255
    assert 64 < dataset.transform.mean.mean() < 192
    first = np.asarray(Image.open(data_root / "pets" / "cat" / "000.png"), dtype=np.uint8)
    first = first[None] if first.ndim == 2 else first.transpose(2, 0, 1)
    stored = userfiles.load_file_dataset(userfiles.file_options({"path": "pets"}))
    assert np.array_equal(stored.x[0], first) and stored.y[0] == 0


def test_relative_paths_follow_data_dir_and_absolute_ones_stand(data_root, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    animal_table().to_csv(elsewhere / "animals.csv", index=False)
    by_dir = load_dataset("file", path="animals.csv", data_dir=str(elsewhere))
    absolute = load_dataset("file", path=str(elsewhere / "animals.csv"))
    assert by_dir.source["path"] == absolute.source["path"] == str(elsewhere / "animals.csv")


# ---------------------------------------------------------------- the input transform


def test_transform_reproduces_the_loaders_standardisation():
    wine_x, wine_y = load_wine(return_X_y=True)
    wine = load_dataset("wine")
    test = split_indices(wine_y, 3)[2]
    assert wine.transform.raw_shape == (13,) and wine.transform.mode == "feature"
    assert torch.equal(wine.transform(wine_x[test]), wine.x_test)

    digits_x, digits_y = load_digits(return_X_y=True)
    digits = load_dataset("digits")
    test = split_indices(digits_y, 10)[2]
    assert digits.transform.raw_shape == (8, 8) and digits.transform.mode == "global"
    assert torch.equal(digits.transform(digits_x[test].reshape(-1, 8, 8)), digits.x_test)
    assert torch.equal(digits.transform(digits_x[test]), digits.x_test)  # flat rows too


def test_transform_reproduces_per_channel_image_standardisation(data_root):
    x, y = images(40, (3, 4, 4)), np.arange(40) % 2
    x_test = images(9, (3, 4, 4), seed=2) * 3 + 1
    write_npz(data_root / "rgb.npz", x=x, y=y, x_test=x_test, y_test=np.arange(9) % 2)
    dataset = load_dataset("file", path="rgb.npz")
    assert dataset.transform.mode == "channel" and dataset.transform.dtype == "float32"
    assert torch.equal(dataset.transform(x_test), dataset.x_test)
    assert torch.equal(dataset.transform(x_test.astype(np.float64)), dataset.x_test)

    write_npz(data_root / "pool.npz", x=x, y=y)  # no test split of its own: split 0.2
    pooled = load_dataset("file", path="pool.npz")
    assert torch.equal(pooled.transform(x[split_indices(y, 2)[2]]), pooled.x_test)


def test_transform_reproduces_official_image_files(tmp_path):
    raw = make_idx_dataset(tmp_path / "mnist")
    dataset = load_dataset("mnist", data_dir=tmp_path)
    assert dataset.transform.raw_shape == (28, 28) and dataset.transform.dtype == "float32"
    pixels = raw["t10k-images-idx3-ubyte"].astype(np.float32) / 255
    assert torch.equal(dataset.transform(pixels), dataset.x_test)


def test_transform_round_trips_through_json(data_root):
    write_npz(data_root / "rgb.npz", x=images(30, (3, 2, 2)), y=np.arange(30) % 3)
    for dataset in (
        load_dataset("digits"),
        load_dataset("iris"),
        load_dataset("file", path="rgb.npz"),
    ):
        values = json.loads(json.dumps(dataset.transform.to_dict()))
        again = InputTransform.from_dict(values)
        assert again == dataset.transform
        assert isinstance(values["mean"], list) and again.mean.dtype == np.float64
        raw = np.random.default_rng(0).random((4, *dataset.transform.raw_shape))
        assert torch.equal(again(raw), dataset.transform(raw))
        back = again.invert(again(raw))
        assert back.shape == raw.shape and np.allclose(back, raw, atol=1e-5)


def test_transform_refuses_what_does_not_fit():
    transform = load_dataset("digits").transform
    with pytest.raises(
        ValueError,
        match=r"expected inputs of shape \(N, 8, 8\) or \(N, 1, 8, 8\) or \(N, 64\), got \(2, 63\)",
    ):
        transform(np.zeros((2, 63)))
    with pytest.raises(ValueError, match=r"inputs hold 2 NaN or infinite value\(s\)"):
        transform(np.array([[np.nan] + [0.0] * 63, [np.inf] + [0.0] * 63]))
    with pytest.raises(ValueError, match="inputs must be numbers"):
        transform(np.array([["a"] * 64]))
    with pytest.raises(ValueError, match="an input transform needs mean, scale"):
        InputTransform.from_dict({"raw_shape": [2], "input_shape": [2], "mode": "feature"})
    assert transform(np.zeros((0, 64))).shape == (0, 1, 8, 8)


def test_built_in_sets_name_their_classes_and_source():
    iris = load_dataset("iris")
    assert iris.class_names == ("0", "1", "2")
    assert iris.source == {"name": "iris", "options": {}}
    moons = load_dataset("moons", n_samples=200)
    assert moons.source["options"] == {"n_samples": 200, "noise": 0.2, "data_seed": 0}


# ---------------------------------------------------------------- bad files


def bad_npz(root: Path, **arrays: np.ndarray) -> dict:
    write_npz(root / "bad.npz", **arrays)
    return {"path": "bad.npz"}


def bad_csv(root: Path, frame: pd.DataFrame) -> dict:
    frame.to_csv(root / "bad.csv", index=False)
    return {"path": "bad.csv"}


X10 = images(10, (3,))
Y10 = np.arange(10) % 2


def _npz_object_array(root: Path) -> dict:
    with open(root / "bad.npz", "wb") as handle:
        np.savez(handle, x=np.array([{"a": 1}] * 10, dtype=object), y=Y10)
    return {"path": "bad.npz"}


def _folder_odd_size(root: Path) -> dict:
    write_image_folder(root / "pets")
    Image.new("L", (7, 5)).save(root / "pets" / "dog" / "005.png")
    return {"path": "pets"}


def _folder_mixed_modes(root: Path) -> dict:
    write_image_folder(root / "pets")
    Image.new("RGB", (6, 5)).save(root / "pets" / "dog" / "002.png")
    return {"path": "pets"}


def _folder_stray_file(root: Path) -> dict:
    write_image_folder(root / "pets")
    (root / "pets" / "cat" / "notes.txt").write_text("cute")
    return {"path": "pets"}


def _folder_alpha(root: Path) -> dict:
    write_image_folder(root / "pets")
    Image.new("RGBA", (6, 5)).save(root / "pets" / "cat" / "001.png")
    return {"path": "pets"}


def _folder_empty_class(root: Path) -> dict:
    write_image_folder(root / "pets")
    (root / "pets" / "eel").mkdir()
    return {"path": "pets"}


def _table(**columns) -> pd.DataFrame:
    frame = animal_table()
    for name, values in columns.items():
        frame[name] = values
    return frame


BAD_FILES = [
    (lambda r: {"path": "nowhere.csv"}, "path", r"nowhere.csv does not exist"),
    (lambda r: {}, "path", r"the file dataset needs option path"),
    (
        lambda r: (r / "notes.txt").write_text("x") and {"path": "notes.txt"},
        "format",
        r"cannot tell the format of 'notes.txt' from its suffix",
    ),
    (
        lambda r: bad_csv(r, animal_table()) | {"format": "xlsx"},
        "format",
        r"unknown format 'xlsx'; accepted: npz, csv, parquet, image_folder",
    ),
    (
        lambda r: bad_npz(r, x=X10, y=Y10) | {"label": "y"},
        "label",
        r"label names a table's column; a npz dataset has no columns",
    ),
    (
        lambda r: (r / "bad.npz").write_bytes(b"not a zip at all") and {"path": "bad.npz"},
        "path",
        r"bad.npz is not a readable .npz archive",
    ),
    (
        lambda r: bad_npz(r, x=X10, y=Y10[:9]),
        "path",
        r"array 'x' holds 10 examples but 'y' holds 9 labels",
    ),
    (
        lambda r: bad_npz(r, x=X10, y=Y10 + 0.5),
        "path",
        r"array 'y' holds labels that are not whole numbers \(e.g. 0.5\)",
    ),
    (
        lambda r: bad_npz(r, x=X10, y=Y10 * 2),
        "path",
        r"array 'y' has no example of 1 class\(es\) \(1\): labels must be 0..C-1",
    ),
    (lambda r: bad_npz(r, x=X10, y=Y10 - 1), "path", r"array 'y' holds negative labels"),
    (
        lambda r: bad_npz(r, x=X10, y=np.array(["a", "b"] * 5)),
        "path",
        r"array 'y' must hold integer class labels 0..C-1, got dtype <U1",
    ),
    (
        lambda r: bad_npz(r, x=np.where(np.eye(10, 3) > 0, np.nan, X10), y=Y10),
        "path",
        r"array 'x' holds 3 NaN or infinite value\(s\)",
    ),
    (
        lambda r: bad_npz(r, x=np.zeros(10), y=Y10),
        "path",
        r"array 'x' has shape \(10,\); expected \(N, F\) features, \(N, H, W\)",
    ),
    (lambda r: bad_npz(r, x=X10, y=Y10.reshape(10, 1)), "path", r"expected one label per example"),
    (_npz_object_array, "path", r"array 'x' cannot be read .*store numbers"),
    (lambda r: bad_npz(r, x=X10, y=Y10, z=Y10), "path", r"holds array\(s\) 'z'"),
    (lambda r: bad_npz(r, x=X10, y=Y10, x_test=X10), "path", r"only one of x_test and y_test"),
    (
        lambda r: bad_npz(r, x=X10, y=Y10, x_test=X10, y_test=Y10 + 1),
        "path",
        r"array 'y_test' holds label 2, but 'y' has classes 0..1 only",
    ),
    (lambda r: bad_npz(r, x=X10, y=Y10 * 0), "path", r"array 'y' holds one class only"),
    (
        lambda r: bad_csv(r, _table(colour=["red"] * 60)),
        "path",
        r"column\(s\) 'colour' are not numeric; every column but the label column 'label'",
    ),
    (
        lambda r: bad_csv(r, _table(b=[np.nan, np.inf] + [0.0] * 58)),
        "path",
        r"feature column\(s\) hold empty, NaN or infinite values: 'b' \(2\)",
    ),
    (
        lambda r: bad_csv(r, _table().rename(columns={"label": "species"})),
        "label",
        r"has no column 'label' \(the label column; option label\); columns: 'a', 'b', 'species'",
    ),
    (
        lambda r: bad_csv(r, _table(label=[None] + ANIMALS * 19 + ["ant", "ant"])),
        "path",
        r"label column 'label' has 1 empty value\(s\)",
    ),
    (
        lambda r: bad_csv(r, _table(label=[0, 2] * 30)),
        "path",
        r"label column 'label' has no example of 1 class\(es\) \(1\)",
    ),
    (
        lambda r: bad_csv(r, _table(label=[0.5] * 60)),
        "path",
        r"label column 'label' holds labels that are not whole numbers",
    ),
    (lambda r: bad_csv(r, _table(label=["ant"] * 60)), "path", r"holds one class only"),
    (_folder_odd_size, "path", r"dog/005.png is grey 7x5 pixels but cat/000.png is grey 6x5"),
    (_folder_mixed_modes, "path", r"dog/002.png is RGB 6x5 pixels but cat/000.png is grey 6x5"),
    (_folder_stray_file, "path", r"cat/notes.txt is not a .png, .jpg, .jpeg image"),
    (_folder_alpha, "path", r"cat/001.png has colour mode RGBA"),
    (_folder_empty_class, "path", r"class folder 'eel' holds no images"),
]


@pytest.mark.parametrize(("make", "field", "pattern"), BAD_FILES)
def test_bad_files_are_refused_with_the_same_words_by_the_check_and_the_loader(
    data_root, make, field, pattern
):
    options = make(data_root)
    with pytest.raises(FileDatasetError, match=pattern) as checked:
        check_file_dataset(**options)
    assert checked.value.field == field
    with pytest.raises(FileDatasetError) as loaded:
        load_dataset("file", **options)
    assert str(loaded.value) == str(checked.value)


def test_a_class_too_rare_to_stratify_is_named(data_root):
    frame = animal_table()
    frame.loc[frame.index[frame["label"] == "moth"][2:], "label"] = "ant"  # 2 moths left
    frame.to_csv(data_root / "rare.csv", index=False)
    message = r"class 1 \('moth'\) has only 2 example\(s\); every class needs at least 3"
    with pytest.raises(FileDatasetError, match=message) as caught:
        check_file_dataset(path="rare.csv")
    assert caught.value.field == "path"
    with pytest.raises(ValueError, match=message):
        load_dataset("file", path="rare.csv")
    animal_table().to_csv(data_root / "animals.csv", index=False)
    with pytest.raises(FileDatasetError, match=r"val split would hold 1 of 60") as caught:
        check_file_dataset(path="animals.csv", val_fraction=0.02)
    assert caught.value.field == "val_fraction"


def test_unknown_options_are_listed():
    with pytest.raises(TypeError, match=r"unknown option\(s\) sep for dataset 'file'; accepted"):
        load_dataset("file", path="x.csv", sep=";")


# ---------------------------------------------------------------- the cache


def test_a_file_is_read_once_per_process_until_it_changes(data_root, monkeypatch):
    path = data_root / "animals.csv"
    animal_table().to_csv(path, index=False)
    reads = []
    real = userfiles.read_file_dataset

    def counted(options):
        reads.append(options.path)
        return real(options)

    monkeypatch.setattr(userfiles, "read_file_dataset", counted)
    first = load_dataset("file", path="animals.csv")
    second = load_dataset("file", path="animals.csv", split_seed=1)
    assert len(reads) == 1
    assert not torch.equal(first.y_test, second.y_test)  # a new split of the same arrays

    animal_table(n=90).to_csv(path, index=False)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_dataset("file", path="animals.csv").source["n_examples"] == 90
    assert len(reads) == 2

    # bounded: a third file pushes out the least recently used
    for name in ("b.csv", "c.csv"):
        animal_table().to_csv(data_root / name, index=False)
        load_dataset("file", path=name)
    assert len(userfiles._CACHE) == userfiles.CACHE_SIZE == 2
    load_dataset("file", path="animals.csv")
    assert len(reads) == 5


def test_the_check_keeps_nothing(data_root):
    animal_table().to_csv(data_root / "animals.csv", index=False)
    check_file_dataset(path="animals.csv")
    assert not userfiles._CACHE


def test_cached_arrays_are_read_only(data_root):
    animal_table().to_csv(data_root / "animals.csv", index=False)
    stored = userfiles.load_file_dataset(userfiles.file_options({"path": "animals.csv"}))
    with pytest.raises(ValueError, match="read-only"):
        stored.x[0, 0] = 1.0


# ---------------------------------------------------------------- training and the CLI


def test_a_csv_file_trains_end_to_end(data_root):
    animal_table(n=90).to_csv(data_root / "animals.csv", index=False)
    result = fit(
        {
            "dataset": "file",
            "dataset_options": {"path": "animals.csv"},
            "model_options": {"hidden": [8]},
            "epochs": 1,
            "batch_size": 32,
            "variance": "uniform",
            "noise_scale": 0.05,
            "device": "cpu",
        }
    )
    assert len(result.history) == 1
    assert all(math.isfinite(value) for value in result.metrics.values())
    assert result.dataset["class_names"] == ["ant", "moth", "zebra"]
    assert result.dataset["source"]["format"] == "csv"


def test_data_show_reads_a_file(data_root, capsys):
    animal_table().rename(columns={"label": "species"}).to_csv(data_root / "a.csv", index=False)
    assert main(["data", "show", "file", "--path", "a.csv", "--label", "species"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["class_names"] == ["ant", "moth", "zebra"] and shown["input_shape"] == [2]
    assert shown["source"]["label"] == "species"
    assert main(["data", "show", "file", "--path", "a.csv"]) == 2
    assert "has no column 'label'" in capsys.readouterr().err
    assert main(["data", "show", "iris", "--path", "a.csv"]) == 2
    assert "for the file dataset" in capsys.readouterr().err
