"""One concept, the user's own dataset files (.npz arrays, CSV or Parquet tables, image folders).

`file_options` checks the options of the ``file`` dataset and finds the file;
`read_file_dataset` parses it and refuses what cannot train, with a message that names the
problem (a sweep's submission check and its trials call the same functions, so they say the
same thing). Each `FileDatasetError` carries the option it is about (``field``). The file is
read from disk once: its bytes are hashed for provenance and parsed from memory.
`load_file_dataset` keeps the last `CACHE_SIZE` parsed files in the process, keyed by path,
size and modification time, since one Ray worker process trains many trials.

Layouts: ``.npz`` with arrays ``x`` and ``y`` (and optionally ``x_test``, ``y_test``, then the
test split); a CSV or Parquet table whose label column is ``label`` (option ``label``) and
whose other columns are numeric features; an image folder ``root/<class name>/<image>``.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradreg.data.standard_files import resolve_data_dir

FORMATS = ("npz", "csv", "parquet", "image_folder")
TABLE_FORMATS = ("csv", "parquet")
SUFFIXES = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_LABEL = "label"
NPZ_ARRAYS = ("x", "y", "x_test", "y_test")
OPTIONS = {"path": None, "format": None, "label": None, "data_dir": None}
CACHE_SIZE = 2
_LISTED = 10  # names quoted in a message, at most


class FileDatasetError(ValueError):
    """A file dataset that cannot train; ``field`` names the option (or split setting) at fault:
    path, format, label, val_fraction or test_fraction."""

    def __init__(self, message: str, field: str = "path") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class FileOptions:
    path: Path  # absolute
    format: str
    label: str | None  # tables only; None: DEFAULT_LABEL


@dataclass(frozen=True)
class FileData:
    """A parsed, checked file: inputs in the file's own units, labels 0..C-1."""

    x: np.ndarray  # (N, F) features, (N, H, W) grey or (N, C, H, W) images; read-only
    y: np.ndarray  # int64 (N,)
    class_names: tuple[str, ...]
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    source: dict[str, Any]  # provenance: path, format, digest, n_examples, x_shape, class_names

    @property
    def is_image(self) -> bool:
        return self.x.ndim > 2


# ---------------------------------------------------------------- options


def file_options(options: Mapping[str, Any]) -> FileOptions:
    """The checked options of the file dataset: the file exists and its format is known.

    A relative ``path`` lies under ``data_dir`` (default ``$GRADREG_DATA_DIR``, else ./data).
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)} for dataset 'file'; accepted: "
            f"{', '.join(OPTIONS)}"
        )
    path, fmt, label = options.get("path"), options.get("format"), options.get("label")
    if path is None:
        raise FileDatasetError(
            "the file dataset needs option path: a .npz, .csv or .parquet file or an image "
            "folder, relative to the data directory"
        )
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise FileDatasetError(f"path must be a file or folder name (a string), got {path!r}")
    if fmt is not None and fmt not in FORMATS:
        raise FileDatasetError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}", "format")
    if label is not None and (not isinstance(label, str) or not label):
        raise FileDatasetError(f"label must be a column name (a string), got {label!r}", "label")
    full = resolve_data_dir(options.get("data_dir")) / Path(path).expanduser()
    if not full.exists():
        raise FileDatasetError(f"{full} does not exist")
    fmt = fmt or _infer_format(full)
    if fmt == "image_folder" and not full.is_dir():
        raise FileDatasetError(f"{full} is a file; format image_folder reads a folder")
    if fmt != "image_folder" and full.is_dir():
        raise FileDatasetError(
            f"{full} is a folder; format {fmt} reads a file (a folder of class folders of "
            "images is format image_folder)"
        )
    if label is not None and fmt not in TABLE_FORMATS:
        raise FileDatasetError(
            f"label names a table's column; a {fmt} dataset has no columns (drop label)", "label"
        )
    return FileOptions(full, fmt, label)


def _infer_format(path: Path) -> str:
    if path.is_dir():
        return "image_folder"
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise FileDatasetError(
            f"cannot tell the format of {path.name!r} from its suffix (known: "
            f"{', '.join(SUFFIXES)}); give format: one of {', '.join(FORMATS)}",
            "format",
        )
    return fmt


# ---------------------------------------------------------------- reading


def read_file_dataset(options: FileOptions) -> FileData:
    """Parse and check the file (no cache): every problem is a `FileDatasetError`."""
    return _READERS[options.format](options)


_CACHE: OrderedDict[tuple[Any, ...], FileData] = OrderedDict()


def load_file_dataset(options: FileOptions) -> FileData:
    """`read_file_dataset`, kept for the next call while the file stays unchanged."""
    key = (str(options.path), options.format, options.label, _signature(options))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    data = read_file_dataset(options)
    _CACHE[key] = data
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return data


def _signature(options: FileOptions) -> tuple[Any, ...]:
    """What changes when the file (or a file in the folder) changes: sizes and mtimes."""
    if options.format != "image_folder":
        stat = options.path.stat()
        return (stat.st_size, stat.st_mtime_ns)
    entries = []
    for path in sorted(options.path.rglob("*")):
        stat = path.stat()
        entries.append((str(path.relative_to(options.path)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def _source(options: FileOptions, digest: str, data: dict[str, Any]) -> dict[str, Any]:
    x, x_test = data["x"], data.get("x_test")
    n_examples = len(x) + (0 if x_test is None else len(x_test))
    source = {
        "name": "file",
        "path": str(options.path),
        "format": options.format,
        "digest": digest,
        "n_examples": n_examples,
        "x_shape": [n_examples, *x.shape[1:]],
        "class_names": list(data["class_names"]),
    }
    if options.format in TABLE_FORMATS:
        source["label"] = options.label or DEFAULT_LABEL
    return source


def _finish(options: FileOptions, digest: str, data: dict[str, Any]) -> FileData:
    for array in data.values():
        if isinstance(array, np.ndarray):
            array.setflags(write=False)  # shared through the cache: nobody writes into it
    return FileData(
        data["x"],
        data["y"],
        tuple(data["class_names"]),
        data.get("x_test"),
        data.get("y_test"),
        _source(options, digest, data),
    )


def _quoted(names: list[Any]) -> str:
    shown = ", ".join(repr(str(name)) for name in names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


# ---------------------------------------------------------------- labels


def class_indices(labels: np.ndarray, where: str) -> int:
    """The number of classes C of integer labels that must be 0..C-1, each class present (the
    rule for a file's labels and a user loader's, `gradreg.data.user_loaders`)."""
    if len(labels) == 0:
        raise FileDatasetError(f"{where} holds no examples")
    if labels.min() < 0:
        raise FileDatasetError(
            f"{where} holds negative labels (e.g. {labels.min()}); labels are integers 0..C-1"
        )
    present = np.unique(labels)
    n_classes = int(present[-1]) + 1
    if len(present) < n_classes:
        absent = n_classes - len(present)
        listed = ", ".join(map(str, _missing(present, limit=_LISTED)))
        more = ", …" if absent > _LISTED else ""
        raise FileDatasetError(
            f"{where} has no example of {absent} class(es) ({listed}{more}): labels must be "
            f"0..C-1 with every class present (C = {n_classes}, one more than "
            "the largest label)"
        )
    if n_classes < 2:
        raise FileDatasetError(f"{where} holds one class only; a classifier needs at least 2")
    return n_classes


def _missing(present: np.ndarray, limit: int) -> list[int]:
    """The first ``limit`` integers in 0..max(present) absent from sorted ``present``."""
    missing: list[int] = []
    expected = 0
    for value in present.tolist():
        while expected < value and len(missing) < limit:
            missing.append(expected)
            expected += 1
        if len(missing) == limit:
            break
        expected = value + 1
    return missing


def integer_labels(values: np.ndarray, where: str) -> np.ndarray:
    """``values`` as int64, if they are whole numbers (any integer, bool or float dtype): a
    file's labels and a user loader's."""
    if values.dtype.kind in "iub":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        whole = np.isfinite(values) & (np.floor(values) == values)
        if not whole.all():
            example = values[~whole][0]
            raise FileDatasetError(
                f"{where} holds labels that are not whole numbers (e.g. {example}); labels are "
                "integers 0..C-1"
            )
        return values.astype(np.int64)
    raise FileDatasetError(
        f"{where} must hold integer class labels 0..C-1, got dtype {values.dtype}"
    )


# ---------------------------------------------------------------- npz


def _read_npz(options: FileOptions) -> FileData:
    raw = options.path.read_bytes()
    try:
        archive = np.load(io.BytesIO(raw), allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise FileDatasetError(f"{options.path} is not a readable .npz archive ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise FileDatasetError(
            f"{options.path} holds one array (.npy data); save x and y with numpy.savez"
        )
    with archive:
        names = list(archive.files)
        unknown = [name for name in names if name not in NPZ_ARRAYS]
        if unknown:
            raise FileDatasetError(
                f"{options.path} holds array(s) {_quoted(unknown)}; a .npz dataset holds x and y, "
                "and optionally x_test and y_test"
            )
        for required in ("x", "y"):
            if required not in names:
                raise FileDatasetError(
                    f"{options.path} has no array {required!r}; a .npz dataset holds x and y, "
                    "and optionally x_test and y_test"
                )
        if ("x_test" in names) != ("y_test" in names):
            raise FileDatasetError(
                f"{options.path} holds only one of x_test and y_test; give both or neither"
            )
        arrays = {name: _npz_array(archive, name) for name in names}
    x, y = arrays["x"], arrays["y"]
    _check_npz_inputs(x, "x")
    labels = _npz_labels(y, "y", len(x))
    n_classes = class_indices(labels, "array 'y'")
    data: dict[str, Any] = {"x": x, "y": labels, "class_names": [str(c) for c in range(n_classes)]}
    if "x_test" in arrays:
        x_test, y_test = arrays["x_test"], arrays["y_test"]
        _check_npz_inputs(x_test, "x_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise FileDatasetError(
                f"array 'x_test' holds examples of shape {x_test.shape[1:]}, 'x' of shape "
                f"{x.shape[1:]}"
            )
        test_labels = _npz_labels(y_test, "y_test", len(x_test))
        if test_labels.min() < 0 or test_labels.max() >= n_classes:
            bad = test_labels[(test_labels < 0) | (test_labels >= n_classes)][0]
            raise FileDatasetError(
                f"array 'y_test' holds label {bad}, but 'y' has classes 0..{n_classes - 1} only"
            )
        data.update(x_test=x_test, y_test=test_labels)
    return _finish(options, hashlib.sha256(raw).hexdigest(), data)


def _npz_array(archive: Any, name: str) -> np.ndarray:
    try:
        array: np.ndarray = archive[name]
    except ValueError as error:  # object arrays need pickle, which is never allowed
        raise FileDatasetError(f"array {name!r} cannot be read ({error}); store numbers") from None
    return array


def _check_npz_inputs(x: np.ndarray, name: str) -> None:
    if x.dtype.kind not in "biuf":
        raise FileDatasetError(f"array {name!r} must hold numbers, got dtype {x.dtype}")
    if x.ndim not in (2, 3, 4):
        raise FileDatasetError(
            f"array {name!r} has shape {x.shape}; expected (N, F) features, (N, H, W) grey "
            "images or (N, C, H, W) images"
        )
    if len(x) == 0:
        raise FileDatasetError(f"array {name!r} holds no examples")
    if x.dtype.kind == "f":
        bad = x.size - int(np.count_nonzero(np.isfinite(x)))
        if bad:
            raise FileDatasetError(f"array {name!r} holds {bad} NaN or infinite value(s)")


def _npz_labels(y: np.ndarray, name: str, n_examples: int) -> np.ndarray:
    if y.ndim != 1:
        raise FileDatasetError(
            f"array {name!r} has shape {y.shape}; expected one label per example, shape (N,)"
        )
    x_name = "x" if name == "y" else "x_test"
    if len(y) != n_examples:
        raise FileDatasetError(
            f"array {x_name!r} holds {n_examples} examples but {name!r} holds {len(y)} labels"
        )
    return integer_labels(y, f"array {name!r}")


# ---------------------------------------------------------------- tables


def _read_table(options: FileOptions) -> FileData:
    try:
        import pandas as pd
    except ImportError as error:  # pragma: no cover - the sweeps extra brings it
        raise ImportError(
            f"reading {options.format} tables needs pandas and pyarrow: pip install "
            "'gradreg[tables]'"
        ) from error

    raw = options.path.read_bytes()
    try:
        if options.format == "csv":
            frame = pd.read_csv(io.BytesIO(raw))
        else:
            frame = pd.read_parquet(io.BytesIO(raw))
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise FileDatasetError(
            f"{options.path} is not a readable {options.format} table ({error})"
        ) from None
    label = options.label or DEFAULT_LABEL
    columns = [str(column) for column in frame.columns]
    if label not in columns:
        raise FileDatasetError(
            f"{options.path} has no column {label!r} (the label column; option label); columns: "
            f"{_quoted(columns)}",
            "label",
        )
    if len(frame) == 0:
        raise FileDatasetError(f"{options.path} holds no rows")
    frame.columns = columns
    features = [column for column in columns if column != label]
    if not features:
        raise FileDatasetError(f"{options.path} has no feature column besides {label!r}")
    wrong = [
        c
        for c in features
        if not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_complex_dtype(frame[c])
    ]
    if wrong:
        raise FileDatasetError(
            f"column(s) {_quoted(wrong)} are not numeric; every column but the label column "
            f"{label!r} is a feature and must hold numbers"
        )
    x = frame[features].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.count_nonzero(~np.isfinite(x), axis=0)
    if bad.any():
        counted = [f"{features[i]!r} ({bad[i]})" for i in np.flatnonzero(bad)]
        raise FileDatasetError(
            "feature column(s) hold empty, NaN or infinite values: " + ", ".join(counted[:_LISTED])
        )
    labels, class_names = _table_labels(frame[label], label)
    data = {"x": x, "y": labels, "class_names": class_names}
    return _finish(options, hashlib.sha256(raw).hexdigest(), data)


def _table_labels(column: Any, label: str) -> tuple[np.ndarray, list[str]]:
    """Labels as 0..C-1: integer columns as they are, any other column mapped by its sorted
    distinct values (as text), which become the class names."""
    import pandas as pd

    where = f"label column {label!r}"
    empty = int(column.isna().sum())
    if empty:
        raise FileDatasetError(f"{where} has {empty} empty value(s); every row needs a label")
    if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
        names, codes = np.unique(column.astype(str).to_numpy(dtype=str), return_inverse=True)
        if len(names) < 2:
            raise FileDatasetError(f"{where} holds one class only; a classifier needs at least 2")
        return codes.astype(np.int64).reshape(-1), [str(name) for name in names]
    labels = integer_labels(column.to_numpy(), where)
    n_classes = class_indices(labels, where)
    return labels, [str(c) for c in range(n_classes)]


# ---------------------------------------------------------------- image folders


def _read_image_folder(options: FileOptions) -> FileData:
    root = options.path
    classes, files = _image_files(root)
    digest = hashlib.sha256()
    x: np.ndarray | None = None
    first = ""
    for i, path in enumerate(files):
        name = str(path.relative_to(root))
        content = path.read_bytes()
        digest.update(name.encode() + b"\0" + len(content).to_bytes(8, "little") + content)
        pixels = _decode(content, name)
        if x is None:
            x, first = np.empty((len(files), *pixels.shape), dtype=np.uint8), name
        elif pixels.shape != x.shape[1:]:
            raise FileDatasetError(_odd_image(name, pixels.shape, first, x.shape[1:]))
        x[i] = pixels
    assert x is not None  # _image_files found at least two classes of one image or more
    labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in enumerate(classes.values())])
    data = {"x": x, "y": labels, "class_names": list(classes)}
    return _finish(options, digest.hexdigest(), data)


def _image_files(root: Path) -> tuple[dict[str, int], list[Path]]:
    """Class names (sorted) with their image counts, and every image file in that order."""
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    stray = [p.name for p in entries if not p.is_dir()]
    if stray:
        raise FileDatasetError(
            f"{root} holds file(s) {_quoted(stray)} beside the class folders; an image folder "
            "holds root/<class name>/<image> only"
        )
    classes: dict[str, int] = {}
    files: list[Path] = []
    for folder in entries:
        images = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        for image in images:
            if image.is_dir() or image.suffix.lower() not in IMAGE_SUFFIXES:
                raise FileDatasetError(
                    f"{image.relative_to(root)} is not a {', '.join(IMAGE_SUFFIXES)} image; "
                    "a class folder holds images only"
                )
        if not images:
            raise FileDatasetError(f"class folder {folder.name!r} holds no images")
        classes[folder.name] = len(images)
        files += images
    if len(classes) < 2:
        raise FileDatasetError(
            f"{root} holds {len(classes)} class folder(s); an image folder holds "
            "root/<class name>/<image>, at least 2 classes"
        )
    return classes, files


def _decode(content: bytes, name: str) -> np.ndarray:
    """One image as (C, H, W) uint8: grey (L, or 1-bit) C=1, RGB (or palette) C=3."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(content)) as opened:
            opened.load()
            image: Image.Image = opened
            if image.mode == "1":
                image = image.convert("L")
            elif image.mode == "P":
                image = image.convert("RGB")
            if image.mode not in ("L", "RGB"):
                raise FileDatasetError(
                    f"{name} has colour mode {image.mode}; an image folder reads grey (L) or RGB "
                    "images (flatten an alpha channel, convert 16-bit images)"
                )
            pixels = np.asarray(image, dtype=np.uint8)
    except FileDatasetError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise FileDatasetError(f"{name} is not a readable image ({error})") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _odd_image(name: str, shape: tuple[int, ...], first: str, expected: tuple[int, ...]) -> str:
    def describe(s: tuple[int, ...]) -> str:
        return f"{'grey' if s[0] == 1 else 'RGB'} {s[2]}x{s[1]}"

    return (
        f"{name} is {describe(shape)} pixels but {first} is {describe(expected)}; every image "
        "must have one size and colour mode"
    )


_READERS: dict[str, Callable[[FileOptions], FileData]] = {
    "npz": _read_npz,
    "csv": _read_table,
    "parquet": _read_table,
    "image_folder": _read_image_folder,
}
