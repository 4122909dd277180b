"""The image datasets' standard file formats and where they lie in a data directory: IDX
(MNIST, Fashion-MNIST) and CIFAR-10's python batches, read into their official splits.

Layout under the data directory (``$GRADREG_DATA_DIR``, else ``./data``)::

    mnist/train-images-idx3-ubyte[.gz]   (and train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
    fashion_mnist/...                     t10k-labels-idx1-ubyte: the same four IDX files)
    cifar10/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch

Nothing here touches the network; `gradreg.data.downloader` fetches the files.
"""

from __future__ import annotations

import gzip
import importlib
import math
import os
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any, NamedTuple

import numpy as np

from gradreg import settings


def _numpy_core(name: str) -> ModuleType:
    """numpy's private core module ``name``: numpy._core since 1.26, numpy.core before."""
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{name}")


_multiarray, _numeric = _numpy_core("multiarray"), _numpy_core("numeric")

DATA_DIR_ENV = settings.DATA_DIR_ENV
N_CLASSES = 10


class OfficialSplits(NamedTuple):
    """Raw images (N, C, H, W) uint8 and labels (N,) int64 of the official train and test sets."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than numpy array reconstruction."""


def default_data_dir() -> Path:
    """``$GRADREG_DATA_DIR`` if set, else ``./data``."""
    return settings.data_dir()


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    if data_dir is None:
        return default_data_dir()
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a path (str or Path) or None, got {data_dir!r}")
    return Path(data_dir).expanduser().absolute()


# ---------------------------------------------------------------- IDX (MNIST format)

_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def plain_or_gzip(path: Path) -> Path:
    """`path` itself if it exists, else `path.gz`."""
    if path.is_file() or path.suffix == ".gz":
        return path
    compressed = path.with_name(path.name + ".gz")
    return compressed if compressed.is_file() else path


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: corrupt gzip data ({error})") from error


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The array stored in an IDX file (plain or gzip; `name` also finds `name.gz`)."""
    path = plain_or_gzip(Path(path))
    content = _read_maybe_gzip(path)
    if len(content) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(content)} bytes, no full header)")
    zeros, type_code, n_dims = content[:2], content[2], content[3]
    if zeros != b"\x00\x00" or type_code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{content[:4].hex()}; expected two zero bytes, "
            f"a type code in {{{', '.join(f'0x{code:02X}' for code in _IDX_DTYPES)}}} and "
            "the number of dimensions"
        )
    header_size = 4 + 4 * n_dims
    if len(content) < header_size:
        raise ValueError(f"{path}: truncated IDX header (needs {header_size} bytes)")
    shape = tuple(int(size) for size in np.frombuffer(content, ">u4", n_dims, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = header_size + math.prod(shape) * dtype.itemsize
    if len(content) != expected:
        problem = "truncated IDX file" if len(content) < expected else "IDX size mismatch"
        raise ValueError(
            f"{path}: {problem}: shape {shape} of {dtype.itemsize}-byte values needs "
            f"{expected} bytes, the file holds {len(content)}"
        )
    data: np.ndarray = np.frombuffer(content, dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


# ---------------------------------------------------------------- CIFAR-10 python batches

# Pickle can run arbitrary code while loading, so CIFAR batches should come from a trusted
# source. As a safeguard the unpickler below resolves only what numpy arrays need; a file that
# names anything else (os.system, subprocess, ...) is refused before it can be called.


def _encode_latin1(text: str, encoding: str) -> bytes:
    # Python 3 protocol-2 pickles store bytes as _codecs.encode(text, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_PICKLE_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("_codecs", "encode"): _encode_latin1,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = _PICKLE_ALLOWED.get((module, name))
        if allowed is None:
            raise UnsafePickleError(
                f"{self.source}: refusing to load {module}.{name}; a CIFAR-10 batch holds only "
                "numpy arrays and lists, so this file is corrupt or malicious"
            )
        return allowed


def _unpickle(path: Path) -> Any:
    with path.open("rb") as handle:
        try:
            return _NumpyOnlyUnpickler(handle, path).load()
        except UnsafePickleError:
            raise
        except Exception as error:  # any failure to parse untrusted bytes means a corrupt file
            raise ValueError(f"{path}: not a readable pickle ({error!r})") from error


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 in RGB order and labels (N,) int64 of one CIFAR-10 batch."""
    path = Path(path)
    batch = _unpickle(path)
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or labels is None:
        raise ValueError(f"{path}: not a CIFAR-10 batch (needs a dict with b'data', b'labels')")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be N x 3072 uint8, got {data.shape} {data.dtype}")
    labels = np.asarray(labels, dtype=np.int64)
    _check_labels(path, labels, len(data))
    # each row holds the red 32x32 plane, then green, then blue, each row-major
    return data.reshape(len(data), 3, 32, 32), labels


# ---------------------------------------------------------------- a dataset's files


def _check_labels(path: Path, labels: np.ndarray, n_images: int) -> None:
    if labels.shape != (n_images,):
        raise ValueError(f"{path}: {labels.shape} labels for {n_images} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise ValueError(f"{path}: labels must lie in 0..{N_CLASSES - 1}")


def _read_idx_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = plain_or_gzip(directory / f"{prefix}-images-idx3-ubyte")
    labels_path = plain_or_gzip(directory / f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected N x 28 x 28 uint8 images, got {images.shape}")
    _check_labels(labels_path, labels, len(images))
    return images[:, None], labels


def _read_idx_dataset(directory: Path) -> OfficialSplits:
    return OfficialSplits(*_read_idx_pair(directory, "train"), *_read_idx_pair(directory, "t10k"))


def _read_cifar_dataset(directory: Path) -> OfficialSplits:
    batches = directory / "cifar-10-batches-py"
    train = [read_cifar_batch(batches / f"data_batch_{k}") for k in range(1, 6)]
    x_test, y_test = read_cifar_batch(batches / "test_batch")
    x_train = np.concatenate([images for images, _ in train])
    y_train = np.concatenate([labels for _, labels in train])
    return OfficialSplits(x_train, y_train, x_test, y_test)


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_BATCHES = (*(f"data_batch_{k}" for k in range(1, 6)), "test_batch")
_CIFAR_FILES = tuple(f"cifar-10-batches-py/{batch}" for batch in _CIFAR_BATCHES)


@dataclass(frozen=True)
class Layout:
    """Where a dataset's files lie under ``<data_dir>/<subdir>``, and how they are read."""

    subdir: str
    files: tuple[str, ...]  # what the reader needs, relative to <data_dir>/<subdir>
    read: Callable[[Path], OfficialSplits]
    # Set for IDX datasets: each file may also be stored gzipped, as `name.gz`.
    gzip_ok: bool = False


LAYOUTS = {
    "mnist": Layout("mnist", _IDX_FILES, _read_idx_dataset, gzip_ok=True),
    "fashion_mnist": Layout("fashion_mnist", _IDX_FILES, _read_idx_dataset, gzip_ok=True),
    "cifar10": Layout("cifar10", _CIFAR_FILES, _read_cifar_dataset),
}


def layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise ValueError(f"no data files known for {name!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def dataset_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where dataset `name`'s files live: ``<data_dir>/<name>``."""
    return resolve_data_dir(data_dir) / layout(name).subdir


def present(files: Layout, path: Path) -> bool:
    return path.is_file() or (files.gzip_ok and path.with_name(path.name + ".gz").is_file())


def missing_files(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Expected paths of dataset `name` that are absent (an IDX file may also be `.gz`)."""
    files, directory = layout(name), dataset_dir(name, data_dir)
    return [directory / file for file in files.files if not present(files, directory / file)]


def file_list(files: Layout, paths: list[Path]) -> str:
    suffix = " (or .gz)" if files.gzip_ok else ""
    return "\n".join(f"  {path}{suffix}" for path in paths)


def download_command(name: str, data_dir: Path) -> str:
    return f"python -m gradreg data download {name} --dir {data_dir}"


def load_official_splits(
    name: str, data_dir: str | os.PathLike[str] | None = None
) -> OfficialSplits:
    """Read dataset `name` (mnist, fashion_mnist, cifar10) from `data_dir`."""
    files, root = layout(name), resolve_data_dir(data_dir)
    missing = missing_files(name, root)
    if missing:
        raise FileNotFoundError(
            f"{name} files are missing:\n{file_list(files, missing)}\n"
            f"Get them with `{download_command(name, root)}` on a machine with internet "
            f"access (copy {root / files.subdir} here if that is another machine), "
            "or place the files there by hand."
        )
    return files.read(root / files.subdir)
