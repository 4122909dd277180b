"""The downloader: fetches an image dataset's files (`gradreg.data.standard_files`) into a data
directory.

It fetches over https only (a mirror or a redirect to anything else is refused), never takes
more than a file's pinned size, and keeps a file only if its sha256 is the pinned digest of the
canonical file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import ssl
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

from gradreg import settings
from gradreg.data.standard_files import (
    Layout,
    download_command,
    file_list,
    layout,
    missing_files,
    plain_or_gzip,
    present,
    read_cifar_batch,
    read_idx,
    resolve_data_dir,
)
from gradreg.files import replace_atomically

MIRROR_ENV = settings.MIRROR_ENV


class DownloadError(RuntimeError):
    """A dataset file could not be fetched: a network error, this machine is offline, a URL
    or redirect that is not https, or a server that sent something other than the pinned file."""


@dataclass(frozen=True)
class _Pin:
    """A fetched file's sha256 and size in bytes; no server may send more than `size`."""

    sha256: str
    size: int


@dataclass(frozen=True)
class _Source:
    """Where a dataset's files are fetched from, and what each fetched file must be."""

    default_url: str
    # Each file fetched (`name.gz`, or the archive), by its name on the server.
    pins: Mapping[str, _Pin]
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
        "https://ossci-datasets.s3.amazonaws.com/mnist/", _MNIST_PINS
    ),  # torchvision's
    "fashion_mnist": _Source(
        # The project's own repository: its S3 website endpoint serves plain http only.
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        _FASHION_MNIST_PINS,
    ),
    "cifar10": _Source(
        "https://www.cs.toronto.edu/~kriz/", _CIFAR10_PINS, archive="cifar-10-python.tar.gz"
    ),
}


def downloadable() -> list[str]:
    """The datasets that `download` knows how to fetch."""
    return sorted(_SOURCES)


_NETWORK_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
)


_CHUNK = 1 << 20


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _write_checked(destination: Path, stream: _Readable, *checks: Callable[[Path], object]) -> None:
    """Copy ``stream`` to ``destination`` whole or not at all; each of ``checks`` may read the
    copy and refuse it. Data directories are usually shared: the file is world-readable."""

    def check_all(path: Path) -> None:
        for check in checks:
            check(path)

    replace_atomically(
        destination, lambda out: shutil.copyfileobj(stream, out, _CHUNK), check=check_all
    )


def _is_https(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower() == "https" and bool(parts.hostname)


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to another https URL."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
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


@dataclass(frozen=True)
class _Fetcher:
    """Fetches a dataset's files from ``base_url`` (https): each at most its pinned size, and
    kept only if its sha256 is the pinned one and ``validate`` accepts it."""

    base_url: str
    timeout: float
    manual_help: str  # what the error of a machine that is offline says to do instead
    ssl_context: ssl.SSLContext | None = None

    def __call__(
        self, name: str, destination: Path, validate: Callable[[Path], object], pin: _Pin
    ) -> None:
        url = self.base_url + name
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
                raise ValueError(
                    f"{url} did not give a valid {destination.name}: {error}"
                ) from error

        try:
            with _opener(self.ssl_context).open(url, timeout=self.timeout) as response:
                stream = _Capped(response, pin.size, url, destination.name)
                declared = response.headers.get("Content-Length")
                if declared and declared.strip().isdigit() and int(declared) > pin.size:
                    raise stream.too_big(f"it declared {int(declared)}")
                _write_checked(destination, stream, digest_checked, checked)
        except _NETWORK_ERRORS as error:
            raise DownloadError(
                f"could not download {url} ({error}); this machine may be offline.\n"
                f"{self.manual_help}"
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


def _extract(files: Layout, archive: Path, directory: Path) -> None:
    """Unpack the regular files of `archive` into `directory`, parsing each dataset file."""
    members = _safe_members(archive)
    wanted = {PurePosixPath(file) for file in files.files}
    with tarfile.open(archive, "r:gz") as tar:
        for member in members:
            target = directory / member.name
            if not member.isfile() or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            validate = read_cifar_batch if PurePosixPath(member.name) in wanted else _accept
            stream = tar.extractfile(member)
            assert stream is not None  # a regular file's member
            with stream:
                try:
                    _write_checked(target, stream, validate)
                except ValueError as error:
                    raise ValueError(f"{archive}: bad member {member.name}: {error}") from error
    missing = [directory / file for file in files.files if not (directory / file).is_file()]
    if missing:
        raise ValueError(f"{archive} lacks the expected files:\n{file_list(files, missing)}")


def _accept(_path: Path) -> None:
    """Validation for files the loader never reads."""


def _install_archive(files: Layout, source: _Source, directory: Path, fetch: _Fetcher) -> None:
    archive = directory / str(source.archive)
    fetched_now = not archive.is_file()
    if fetched_now:
        fetch(archive.name, archive, _safe_members, source.pins[archive.name])
    try:
        _extract(files, archive, directory)
    except ValueError:
        if fetched_now:  # a wrong download: fetch it afresh next time
            archive.unlink(missing_ok=True)
        raise
    archive.unlink(missing_ok=True)  # another process may have finished the same download


def _install_files(files: Layout, source: _Source, directory: Path, fetch: _Fetcher) -> None:
    for file in files.files:
        if not present(files, directory / file):
            name = f"{file}.gz"
            fetch(name, directory / name, read_idx, source.pins[name])


def _base_url(subdir: str, source: _Source, base_url: str | None) -> str:
    if base_url:
        given, origin = base_url, "the mirror (--mirror / base_url)"
        url = base_url.rstrip("/") + "/"
    elif mirror := settings.data_mirror():
        # a mirror serves every dataset, each under its own subdirectory like the data directory
        given, origin = mirror, f"the mirror in ${MIRROR_ENV}"
        url = f"{mirror.rstrip('/')}/{subdir}/"
    else:
        given, origin, url = source.default_url, "the official URL", source.default_url
    if not _is_https(url):
        raise DownloadError(
            f"{origin} {given!r} is not an https URL; dataset files are fetched over https "
            "only (give an https:// mirror)"
        )
    return url


def _manual_help(name: str, root: Path) -> str:
    files, source = layout(name), _SOURCES[name]
    directory = root / files.subdir
    unpacked = f" (unpacked from {source.archive})" if source.archive else ""
    return (
        f"On a machine with internet access run `{download_command(name, root)}` and copy "
        f"{directory} here, or place these files{unpacked} by hand:\n"
        f"{file_list(files, [directory / file for file in files.files])}"
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
    files, root = layout(name), resolve_data_dir(data_dir)
    source, directory = _SOURCES[name], root / files.subdir
    if missing_files(name, root):
        url = _base_url(files.subdir, source, base_url)
        directory.mkdir(parents=True, exist_ok=True)
        fetch = _Fetcher(url, timeout, _manual_help(name, root), ssl_context)
        install = _install_archive if source.archive else _install_files
        install(files, source, directory, fetch)
    return [plain_or_gzip(directory / file) for file in files.files]
