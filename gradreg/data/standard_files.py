"""Image datasets read from a data directory in their standard file formats, and their download.

Layout under the data directory (``$GRADREG_DATA_DIR``, else ``./data``)::

    mnist/train-images-idx3-ubyte[.gz]   (and train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
    fashion_mnist/...                     t10k-labels-idx1-ubyte: the same four IDX files)
    cifar10/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch

Nothing here touches the network except `download`. It fetches over https only (a mirror or
a redirect to anything else is refused), never takes more than a file's pinned size, and keeps
a file only if its sha256 is the pinned digest of the canonical file.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import pickle
import shutil
import ssl
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Mapping
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
    """A dataset file could not be fetched: a network error, this machine is offline, a URL
    or redirect that is not https, or a server that sent something other than the pinned file."""


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
class _Pin:
    """A fetched file's sha256 and size in bytes; no server may send more than `size`."""

    sha256: str
    size: int


@dataclass(frozen=True)
class _Source:
    subdir: str
    files: tuple[str, ...]  # what the reader needs, relative to <data_dir>/<subdir>
    default_url: str
    read: Callable[[Path], OfficialSplits]
    # Each file fetched (`name.gz`, or the archive), by its name on the server.
    pins: Mapping[str, _Pin]
    # Set for IDX datasets: each file may also be stored gzipped, as `name.gz`.
    gzip_ok: bool = False
    # Set where the files come packed in one tarball; otherwise each is fetched as `name.gz`.
    archive: str | None = None


# The published sha256 and size of each canonical file, as torchvision's and TensorFlow
# Datasets' checksum lists give them. Their md5 sums, which the datasets' own pages publish, are
# noted beside them: MNIST's as torchvision lists them, Fashion-MNIST's from its README,
# CIFAR-10's from its page.
_MNIST_PINS = {
    # md5 f68b3c2dcbeaaa9fbdd348bbdeb94873
    "train-images-idx3-ubyte.gz": _Pin(
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9_912_422
    ),
    # md5 d53e105ee54ea40749a09fcbcd1e9432
    "train-labels-idx1-ubyte.gz": _Pin(
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28_881
    ),
    # md5 9fb629c4189551a2d022fa330f9573f3
    "t10k-images-idx3-ubyte.gz": _Pin(
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1_648_877
    ),
    # md5 ec29112dd5afa0611ce80d1b7f02629c
    "t10k-labels-idx1-ubyte.gz": _Pin(
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4_542
    ),
}
_FASHION_MNIST_PINS = {
    # md5 8d4fb7e6c68d591d4c3dfef9ec88bf0d
    "train-images-idx3-ubyte.gz": _Pin(
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26_421_880
    ),
    # md5 25c81989df183df01b3e8a0aad5dffbe
    "train-labels-idx1-ubyte.gz": _Pin(
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29_515
    ),
    # md5 bef4ecab320f06d8554ea6380940ec79
    "t10k-images-idx3-ubyte.gz": _Pin(
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4_422_102
    ),
    # md5 bb300cfdad3c16e7a12a480ee83cd310
    "t10k-labels-idx1-ubyte.gz": _Pin(
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5_148
    ),
}
_CIFAR10_PINS = {
    # md5 c58f30108f718f92721af3b95e74349a
    "cifar-10-python.tar.gz": _Pin(
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170_498_071
    ),
}

_SOURCES = {
    "mnist": _Source(
        "mnist",
        _IDX_FILES,
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's copy
        _read_idx_dataset,
        _MNIST_PINS,
        gzip_ok=True,
    ),
    "fashion_mnist": _Source(
        "fashion_mnist",
        _IDX_FILES,
        # The project's own repository: its S3 website endpoint serves plain http only.
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        _read_idx_dataset,
        _FASHION_MNIST_PINS,
        gzip_ok=True,
    ),
    "cifar10": _Source(
        "cifar10",
        _CIFAR_FILES,
        "https://www.cs.toronto.edu/~kriz/",
        _read_cifar_dataset,
        _CIFAR10_PINS,
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


_CHUNK = 1 << 20


def _write_atomically(
    destination: Path,
    stream: IO[bytes],
    validate: Callable[[Path], object],
    check: Callable[[Path], object] | None = None,
) -> None:
    """Copy `stream` to a temp file beside `destination`, `check` and validate it, then move it
    in place. Whatever fails, the temp file is removed."""
    fd, temp_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream, out, _CHUNK)
        if check is not None:
            check(temp)
        validate(temp)
        temp.chmod(0o644)  # mkstemp creates 0600; data directories are usually shared
        os.replace(temp, destination)
    finally:
        temp.unlink(missing_ok=True)


def _is_https(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower() == "https" and bool(parts.hostname)


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to another https URL."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not _is_https(newurl):
            raise DownloadError(
                f"refusing the redirect ({code}) from {req.full_url} to {newurl}: "
                "only https URLs are fetched"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(ssl_context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    # ssl_context None: the default context, which verifies certificates and host names
    return urllib.request.build_opener(
        _HttpsOnlyRedirects(), urllib.request.HTTPSHandler(context=ssl_context)
    )


class _Capped:
    """A response read up to `limit` bytes; one byte more is a DownloadError."""

    def __init__(self, response: IO[bytes], limit: int, url: str, name: str) -> None:
        self.response, self.url, self.name = response, url, name
        self.limit = self.left = limit

    def too_big(self, detail: str) -> DownloadError:
        return DownloadError(
            f"{self.url} sent more than its {self.limit} bytes of {self.name} ({detail}); "
            "refusing it"
        )

    def read(self, size: int = -1) -> bytes:
        want = self.left + 1 if size is None or size < 0 else min(size, self.left + 1)
        data = self.response.read(want)
        self.left -= len(data)
        if self.left < 0:
            raise self.too_big("cut off there")
        return data


def _fetch(
    url: str,
    destination: Path,
    timeout: float,
    validate: Callable[[Path], object],
    manual_help: str,
    pin: _Pin,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Fetch `url` into `destination` over https: at most `pin.size` bytes, and kept only if
    its sha256 is `pin.sha256` and `validate` accepts it."""
    if not _is_https(url):
        raise DownloadError(f"refusing to fetch {url}: only https URLs are fetched")

    def digest_checked(path: Path) -> None:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
        if digest.hexdigest() != pin.sha256:
            raise DownloadError(
                f"{url} did not give the pinned {destination.name}: expected sha256 "
                f"{pin.sha256}, got {digest.hexdigest()}; the file was not kept"
            )

    def checked(path: Path) -> None:
        try:
            validate(path)
        except ValueError as error:
            raise ValueError(f"{url} did not give a valid {destination.name}: {error}") from error

    try:
        with _opener(ssl_context).open(url, timeout=timeout) as response:
            stream = _Capped(response, pin.size, url, destination.name)
            declared = response.headers.get("Content-Length")
            if declared and declared.strip().isdigit() and int(declared) > pin.size:
                raise stream.too_big(f"it declared {int(declared)}")
            _write_atomically(destination, stream, checked, digest_checked)
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
    source: _Source,
    directory: Path,
    base_url: str,
    timeout: float,
    manual_help: str,
    ssl_context: ssl.SSLContext | None,
) -> None:
    archive = directory / str(source.archive)
    fetched_now = not archive.is_file()
    if fetched_now:
        url, pin = base_url + archive.name, source.pins[archive.name]
        _fetch(url, archive, timeout, _safe_members, manual_help, pin, ssl_context)
    try:
        _extract(source, archive, directory)
    except ValueError:
        if fetched_now:  # a wrong download: fetch it afresh next time
            archive.unlink(missing_ok=True)
        raise
    archive.unlink(missing_ok=True)  # another process may have finished the same download


def _install_files(
    source: _Source,
    directory: Path,
    base_url: str,
    timeout: float,
    manual_help: str,
    ssl_context: ssl.SSLContext | None,
) -> None:
    for file in source.files:
        if not _present(source, directory / file):
            name = f"{file}.gz"
            url, pin = base_url + name, source.pins[name]
            _fetch(url, directory / name, timeout, read_idx, manual_help, pin, ssl_context)


def _base_url(source: _Source, base_url: str | None) -> str:
    if base_url:
        given, origin = base_url, "the mirror (--mirror / base_url)"
        url = base_url.rstrip("/") + "/"
    elif mirror := settings.data_mirror():
        # a mirror serves every dataset, each under its own subdirectory like the data directory
        given, origin = mirror, f"the mirror in ${MIRROR_ENV}"
        url = f"{mirror.rstrip('/')}/{source.subdir}/"
    else:
        given, origin, url = source.default_url, "the official URL", source.default_url
    if not _is_https(url):
        raise DownloadError(
            f"{origin} {given!r} is not an https URL; dataset files are fetched over https "
            "only (give an https:// mirror)"
        )
    return url


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
    ssl_context: ssl.SSLContext | None = None,
) -> list[Path]:
    """Fetch dataset `name` into ``<data_dir>/<name>`` and return the paths of its files.

    Files already present are kept. `base_url` (else ``$GRADREG_DATA_MIRROR/<name>/``, else
    the dataset's official site) is where the files are fetched from; it must be https, and so
    must every redirect. Each fetched file must match its pinned sha256 and size, else it is
    removed and a `DownloadError` says which file and both digests. `ssl_context` replaces the
    default (verifying) TLS context, e.g. to trust a test server's certificate.
    """
    source, root = _source(name), resolve_data_dir(data_dir)
    directory = root / source.subdir
    if missing_files(name, root):
        url = _base_url(source, base_url)
        directory.mkdir(parents=True, exist_ok=True)
        install = _install_archive if source.archive else _install_files
        install(source, directory, url, timeout, _manual_help(name, root), ssl_context)
    return [_plain_or_gzip(directory / file) for file in source.files]
