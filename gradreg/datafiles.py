"""Image datasets read from a data directory in their standard file formats, and their download.

Layout under the data directory (``$GRADREG_DATA_DIR``, else ``./data``)::

    mnist/train-images-idx3-ubyte[.gz]   (and train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
    fashion_mnist/...                     t10k-labels-idx1-ubyte: the same four IDX files)
    cifar10/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch

Nothing here touches the network except `download`.
"""

from __future__ import annotations

import gzip
import http.client
import math
import os
import pickle
import shutil
import ssl
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, NamedTuple

import numpy as np

from gradreg import settings

try:
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy < 1.26
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

DATA_DIR_ENV = settings.DATA_DIR_ENV
MIRROR_ENV = settings.MIRROR_ENV
N_CLASSES = 10


class OfficialSplits(NamedTuple):
    """Raw images (N, C, H, W) uint8 and labels (N,) int64 of the official train and test sets."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class DownloadError(RuntimeError):
    """A dataset file could not be fetched: a network error, or this machine is offline."""


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

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _plain_or_gzip(path: Path) -> Path:
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
    path = _plain_or_gzip(Path(path))
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
    data = np.frombuffer(content, dtype, offset=header_size).reshape(shape)
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


# ---------------------------------------------------------------- datasets


def _check_labels(path: Path, labels: np.ndarray, n_images: int) -> None:
    if labels.shape != (n_images,):
        raise ValueError(f"{path}: {labels.shape} labels for {n_images} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise ValueError(f"{path}: labels must lie in 0..{N_CLASSES - 1}")


def _read_idx_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _plain_or_gzip(directory / f"{prefix}-images-idx3-ubyte")
    labels_path = _plain_or_gzip(directory / f"{prefix}-labels-idx1-ubyte")
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
class _Source:
    subdir: str
    files: tuple[str, ...]  # what the reader needs, relative to <data_dir>/<subdir>
    default_url: str
    read: Callable[[Path], OfficialSplits]
    # Set for IDX datasets: each file may also be stored gzipped, as `name.gz`.
    gzip_ok: bool = False
    # Set where the files come packed in one tarball; otherwise each is fetched as `name.gz`.
    archive: str | None = None


_SOURCES = {
    "mnist": _Source(
        "mnist",
        _IDX_FILES,
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        _read_idx_dataset,
        gzip_ok=True,
    ),
    "fashion_mnist": _Source(
        "fashion_mnist",
        _IDX_FILES,
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        _read_idx_dataset,
        gzip_ok=True,
    ),
    "cifar10": _Source(
        "cifar10",
        _CIFAR_FILES,
        "https://www.cs.toronto.edu/~kriz/",
        _read_cifar_dataset,
        archive="cifar-10-python.tar.gz",
    ),
}


def downloadable() -> list[str]:
    """The datasets that `download` knows how to fetch."""
    return sorted(_SOURCES)


def _source(name: str) -> _Source:
    if name not in _SOURCES:
        raise ValueError(f"no data files known for {name!r}; known: {', '.join(_SOURCES)}")
    return _SOURCES[name]


def dataset_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where dataset `name`'s files live: ``<data_dir>/<name>``."""
    return resolve_data_dir(data_dir) / _source(name).subdir


def _present(source: _Source, path: Path) -> bool:
    return path.is_file() or (source.gzip_ok and path.with_name(path.name + ".gz").is_file())


def missing_files(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Expected paths of dataset `name` that are absent (an IDX file may also be `.gz`)."""
    source, directory = _source(name), dataset_dir(name, data_dir)
    return [directory / file for file in source.files if not _present(source, directory / file)]


def _file_list(source: _Source, paths: list[Path]) -> str:
    suffix = " (or .gz)" if source.gzip_ok else ""
    return "\n".join(f"  {path}{suffix}" for path in paths)


def _download_command(name: str, data_dir: Path) -> str:
    return f"python -m gradreg data download {name} --dir {data_dir}"


def load_official_splits(
    name: str, data_dir: str | os.PathLike[str] | None = None
) -> OfficialSplits:
    """Read dataset `name` (mnist, fashion_mnist, cifar10) from `data_dir`."""
    source, root = _source(name), resolve_data_dir(data_dir)
    missing = missing_files(name, root)
    if missing:
        raise FileNotFoundError(
            f"{name} files are missing:\n{_file_list(source, missing)}\n"
            f"Get them with `{_download_command(name, root)}` on a machine with internet "
            f"access (copy {root / source.subdir} here if that is another machine), "
            "or place the files there by hand."
        )
    return source.read(root / source.subdir)


# ---------------------------------------------------------------- download

_NETWORK_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
)


def _write_atomically(
    destination: Path, stream: IO[bytes], validate: Callable[[Path], object]
) -> None:
    """Copy `stream` to a temp file beside `destination`, validate it, then move it in place."""
    fd, temp_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
        validate(temp)
        temp.chmod(0o644)  # mkstemp creates 0600; data directories are usually shared
        os.replace(temp, destination)
    finally:
        temp.unlink(missing_ok=True)


def _fetch(
    url: str,
    destination: Path,
    timeout: float,
    validate: Callable[[Path], object],
    manual_help: str,
) -> None:
    def checked(path: Path) -> None:
        try:
            validate(path)
        except ValueError as error:
            raise ValueError(f"{url} did not give a valid {destination.name}: {error}") from error

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            _write_atomically(destination, response, checked)
    except _NETWORK_ERRORS as error:
        raise DownloadError(
            f"could not download {url} ({error}); this machine may be offline.\n{manual_help}"
        ) from error


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    path = PurePosixPath(member.name)
    if path.is_absolute():
        return "absolute path"
    if ".." in path.parts:
        return "'..' in its path"
    if not (member.isfile() or member.isdir()):
        return "not a regular file or directory"
    return None


def _safe_members(archive: Path) -> list[tarfile.TarInfo]:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{archive}: not a readable .tar.gz ({error})") from error
    for member in members:
        reason = _unsafe_reason(member)
        if reason:
            raise ValueError(f"{archive}: refusing unsafe member {member.name!r} ({reason})")
    return members


def _extract(source: _Source, archive: Path, directory: Path) -> None:
    """Unpack the regular files of `archive` into `directory`, parsing each dataset file."""
    members = _safe_members(archive)
    wanted = {PurePosixPath(file) for file in source.files}
    with tarfile.open(archive, "r:gz") as tar:
        for member in members:
            target = directory / member.name
            if not member.isfile() or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            validate = read_cifar_batch if PurePosixPath(member.name) in wanted else _accept
            with tar.extractfile(member) as stream:
                try:
                    _write_atomically(target, stream, validate)
                except ValueError as error:
                    raise ValueError(f"{archive}: bad member {member.name}: {error}") from error
    missing = [directory / file for file in source.files if not (directory / file).is_file()]
    if missing:
        raise ValueError(f"{archive} lacks the expected files:\n{_file_list(source, missing)}")


def _accept(_path: Path) -> None:
    """Validation for files the loader never reads."""


def _install_archive(
    source: _Source, directory: Path, base_url: str, timeout: float, manual_help: str
) -> None:
    archive = directory / str(source.archive)
    fetched_now = not archive.is_file()
    if fetched_now:
        _fetch(base_url + archive.name, archive, timeout, _safe_members, manual_help)
    try:
        _extract(source, archive, directory)
    except ValueError:
        if fetched_now:  # a wrong download: fetch it afresh next time
            archive.unlink(missing_ok=True)
        raise
    archive.unlink(missing_ok=True)  # another process may have finished the same download


def _install_files(
    source: _Source, directory: Path, base_url: str, timeout: float, manual_help: str
) -> None:
    for file in source.files:
        if not _present(source, directory / file):
            name = f"{file}.gz"
            _fetch(base_url + name, directory / name, timeout, read_idx, manual_help)


def _base_url(source: _Source, base_url: str | None) -> str:
    if base_url:
        return base_url.rstrip("/") + "/"
    mirror = settings.data_mirror()
    # a mirror serves every dataset, each under its own subdirectory like the data directory
    if mirror:
        return f"{mirror.rstrip('/')}/{source.subdir}/"
    return source.default_url


def _manual_help(name: str, root: Path) -> str:
    source = _source(name)
    directory = root / source.subdir
    unpacked = f" (unpacked from {source.archive})" if source.archive else ""
    return (
        f"On a machine with internet access run `{_download_command(name, root)}` and copy "
        f"{directory} here, or place these files{unpacked} by hand:\n"
        f"{_file_list(source, [directory / file for file in source.files])}"
    )


def download(
    name: str,
    data_dir: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    timeout: float = 60,
) -> list[Path]:
    """Fetch dataset `name` into ``<data_dir>/<name>`` and return the paths of its files.

    Files already present are kept. `base_url` (else ``$GRADREG_DATA_MIRROR/<name>/``, else
    the dataset's official site) is where the files are fetched from.
    """
    source, root = _source(name), resolve_data_dir(data_dir)
    directory = root / source.subdir
    if missing_files(name, root):
        directory.mkdir(parents=True, exist_ok=True)
        install = _install_archive if source.archive else _install_files
        install(source, directory, _base_url(source, base_url), timeout, _manual_help(name, root))
    return [_plain_or_gzip(directory / file) for file in source.files]
