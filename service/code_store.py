"""Code bundles, content-addressed: ``<sha256 hex>.zip`` in a local directory or a bucket.

`POST /v1/code` puts a bundle here; a sweep's spec names it by digest (``code.digest``); the
launcher hands the job a local copy of it as its runtime environment. Nothing here deletes a
bundle: one a stored sweep still names must stay (a resume, a retry or an extension runs the
same code), so bundles are only ever added.

A directory keeps each bundle owner-only (0600), written whole or not at all. A bucket URI
(``s3://gradreg/code``) goes through pyarrow.fs, as Ray Tune's storage does, which reads the
``AWS_*`` variables (keys, ``AWS_ENDPOINT_URL``, region) from the environment; the launcher
reads a bucket's bundle into a local cache once, checking its digest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO, TYPE_CHECKING

from gradreg.files import PRIVATE, replace_atomically
from sweeps.code import DIGEST_PATTERN, digest_of

if TYPE_CHECKING:
    import pyarrow.fs

DIGEST = re.compile(DIGEST_PATTERN)


class CodeBundleMissing(LookupError):
    """The store has no bundle of this digest."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"the service has no code bundle {digest}; upload it with POST /v1/code")
        self.digest = digest


def bundle_name(digest: str) -> str:
    """The bundle's file name, ``<hex>.zip``, for a digest ``sha256:<hex>``; ValueError for
    anything else (a digest never becomes a path unless it is one)."""
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise ValueError(f"not a code bundle digest (sha256:<64 hex digits>): {digest!r}")
    return digest.removeprefix("sha256:") + ".zip"


class CodeStore:
    """Bundles at ``location`` (a directory, or a bucket URI such as s3://bucket/prefix);
    ``cache_dir`` holds the local copies of a bucket's bundles that the launcher hands Ray."""

    def __init__(self, location: str, cache_dir: Path) -> None:
        self.location = location
        self.cache_dir = cache_dir
        self.remote = "://" in location
        self._bucket: tuple[pyarrow.fs.FileSystem, str] | None = None

    def __repr__(self) -> str:
        return f"CodeStore({self.location!r})"

    def _opened(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """The bucket's filesystem and root, opened on first use (the API starts whether or
        not the bucket answers)."""
        if self._bucket is None:
            import pyarrow.fs

            filesystem, root = pyarrow.fs.FileSystem.from_uri(self.location)
            self._bucket = filesystem, root.rstrip("/")
        return self._bucket

    def _key(self, digest: str) -> str:
        return f"{self._opened()[1]}/{bundle_name(digest)}"

    def _file(self, digest: str) -> Path:
        return Path(self.location).absolute() / bundle_name(digest)

    def put(self, data: bytes) -> str:
        """Keep ``data`` under its digest, which this returns. Idempotent: the same bytes
        again change nothing (a bundle of that digest is those bytes)."""
        digest = digest_of(data)
        if self.exists(digest):
            return digest
        if self.remote:
            filesystem, root = self._opened()
            filesystem.create_dir(root, recursive=True)
            # One PUT: a reader sees the whole object or none.
            with filesystem.open_output_stream(self._key(digest)) as out:
                out.write(data)
        else:
            path = self._file(digest)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            replace_atomically(path, lambda handle: handle.write(data), mode=PRIVATE)
        return digest

    def size(self, digest: str) -> int | None:
        """The bundle's size in bytes, or None when the store does not have it."""
        if self.remote:
            import pyarrow.fs

            info = self._opened()[0].get_file_info(self._key(digest))
            return int(info.size) if info.type == pyarrow.fs.FileType.File else None
        path = self._file(digest)
        return path.stat().st_size if path.is_file() else None

    def exists(self, digest: str) -> bool:
        return self.size(digest) is not None

    def local_path(self, digest: str) -> Path:
        """A local file holding the bundle, for Ray's job client to upload: the store's own
        file for a directory; for a bucket a copy in ``cache_dir``, read once and checked
        against its digest. Raises CodeBundleMissing."""
        if not self.remote:
            path = self._file(digest)
            if not path.is_file():
                raise CodeBundleMissing(digest)
            return path
        cached = self.cache_dir.absolute() / bundle_name(digest)
        if cached.is_file():
            return cached
        if not self.exists(digest):
            raise CodeBundleMissing(digest)
        cached.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

        def download(handle: IO[bytes]) -> None:
            with self._opened()[0].open_input_stream(self._key(digest)) as source:
                while chunk := source.read(1 << 20):
                    handle.write(chunk)

        def check(path: Path) -> None:
            found = digest_of(path.read_bytes())
            if found != digest:
                raise ValueError(
                    f"code bundle {digest} in {self.location} reads as {found}: it was changed "
                    "after it was stored"
                )

        replace_atomically(cached, download, mode=PRIVATE, check=check)
        return cached
