"""A researcher's code bundle: a deterministic zip of their code directory, its checks, and the
Ray runtime environment that ships it to every trial.

Light on purpose (no torch, Ray or MLflow at import): the API checks an uploaded bundle with
`check_bundle`, and the service client packs a directory with `pack_directory`, as the sweeps
CLI does for `--code`.

A bundle is a zip of regular files whose names are relative paths with `/` separators: no
absolute path, no `..` (nor `.` or empty) component, no symlink, no name twice, every name
UTF-8 without NUL. `check_bundle` refuses anything else with a `BundleError` naming the entry;
`unpack_bundle` checks the same again and never writes outside its directory.
"""

from __future__ import annotations

import hashlib
import io
import re
import stat
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
_DIGEST = re.compile(DIGEST_PATTERN)

# How much a bundle may expand when unpacked: its files' total size may be at most this many
# times the larger of its own size and EXPANSION_FLOOR. Source code compresses about 3 to 10
# times; a zip bomb (a small zip of zeros) by a thousand and more.
MAX_EXPANSION = 100
EXPANSION_FLOOR = 1024 * 1024

# What pack_directory leaves out: bytecode and the directories of tools, never code to ship.
SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".venv", "venv", ".mypy_cache", ".pytest_cache"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")

# Every entry pack_directory writes has the same time and mode, so the same files make the same
# bytes (and the same digest) whatever their mtimes and permissions on disk.
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o644
_UTF8_FLAG = 0x800


class BundleError(ValueError):
    """A code bundle refused: `entry` is the offending name in the zip, or None when the
    bundle as a whole is at fault (not a zip, too big, too many files)."""

    def __init__(self, message: str, entry: str | None = None) -> None:
        super().__init__(message)
        self.entry = entry

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.entry))


@dataclass(frozen=True)
class BundleInfo:
    """What `check_bundle` found: the bundle's digest, its size in bytes and its file count."""

    digest: str
    size: int
    files: int


@dataclass(frozen=True)
class CodeBundle:
    """A code bundle in memory: the zip's bytes and where they came from (a directory packed
    by `pack_directory`, or a stored bundle), for messages."""

    data: bytes
    source: str

    @classmethod
    def pack(cls, directory: str | Path) -> CodeBundle:
        return cls(pack_directory(Path(directory)), str(directory))

    @property
    def digest(self) -> str:
        return digest_of(self.data)

    @property
    def file_name(self) -> str:
        """Its content-addressed file name, ``<hex>.zip``."""
        return self.digest.removeprefix("sha256:") + ".zip"

    def modules(self) -> tuple[str, ...]:
        """The top-level modules and packages it provides to an import (as
        `gradreg.user_code.provided_modules` finds them in a directory): its top-level
        ``.py`` files and its top-level directories, by their identifier names."""
        with _open(self.data) as archive:
            names = archive.namelist()
        found = set()
        for name in names:
            head, slash, _ = name.partition("/")
            candidate = head if slash else head.removesuffix(".py") if head.endswith(".py") else ""
            if candidate.isidentifier():
                found.add(candidate)
        return tuple(sorted(found))


def bundle_code_paths(
    directory: Path, entry_points: Sequence[str], digest: str | None = None
) -> list[str]:
    """What a trial's logged model carries of the user's code (MLflow's ``code_paths``): the
    top-level modules and packages of ``directory``, the trial's working directory, which
    Ray's runtime environment made the sweep's bundle (``digest``). It must provide the top
    module of every entry point, or the trial is not running the bundle: a RuntimeError says
    so."""
    from gradreg.user_code import provided_modules  # torch-free

    provided = provided_modules(directory)
    for entry_point in entry_points:
        top = entry_point.partition(":")[0].split(".")[0]
        if top not in provided:
            raise RuntimeError(
                f"the trial's working directory {directory} does not provide {top!r} (of "
                f"{entry_point}), so it is not the sweep's code bundle {digest or ''}: Ray's "
                f"runtime environment (working_dir) did not reach this worker; it provides "
                f"{', '.join(provided) or 'no modules'}"
            )
    return sorted(
        str(entry)
        for entry in directory.iterdir()
        if entry.name != "__pycache__"
        and (entry.name if entry.is_dir() else entry.name.split(".")[0]) in provided
    )


def digest_of(data: bytes) -> str:
    """The content address of a bundle: "sha256:<hex>"."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(value: str) -> bool:
    """Whether `value` is a digest as `digest_of` writes it."""
    return bool(_DIGEST.fullmatch(value))


def pack_directory(path: Path) -> bytes:
    """A deterministic zip of the code directory `path`: its files in sorted order, each with a
    fixed timestamp and mode, named relative to `path`. Left out: `__pycache__`, `*.pyc`,
    `.git`, `.venv` and every other hidden directory. A symlink inside is refused, naming it
    (a bundle holds regular files only; copy what it points at). The same files give the same
    bytes, so the same digest, on every call."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"code directory {str(path)!r} is not a directory")
    files: list[tuple[str, Path]] = []
    _collect(root, root, files)
    if not files:
        raise ValueError(
            f"code directory {str(path)!r} holds no files to send (bytecode and hidden "
            "directories are left out)"
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, file in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.external_attr = (stat.S_IFREG | _FILE_MODE) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so that the mode above is read as one
            archive.writestr(info, file.read_bytes())
    return buffer.getvalue()


def _collect(root: Path, directory: Path, files: list[tuple[str, Path]]) -> None:
    for child in sorted(directory.iterdir()):
        relative = child.relative_to(root).as_posix()
        if child.is_symlink():
            raise ValueError(
                f"code directory {str(root)!r} holds a symlink, {relative!r}: a bundle holds "
                "regular files only; copy the file it points at instead"
            )
        if child.is_dir():
            if child.name in SKIPPED_DIRS or child.name.startswith("."):
                continue
            _collect(root, child, files)
        elif child.is_file():
            if not child.name.endswith(SKIPPED_SUFFIXES):
                files.append((relative, child))
        else:
            raise ValueError(
                f"code directory {str(root)!r} holds {relative!r}, which is neither a regular "
                "file nor a directory"
            )


def check_bundle(data: bytes, *, max_bytes: int, max_files: int) -> BundleInfo:
    """Check an uploaded bundle without unpacking it: at most `max_bytes` bytes, at most
    `max_files` files, every entry a safe relative name of a regular file, and no more
    expansion than MAX_EXPANSION allows. Raises BundleError naming what is wrong."""
    if len(data) > max_bytes:
        raise BundleError(f"the bundle is {len(data)} bytes, over the cap of {max_bytes} bytes")
    with _open(data) as archive:
        entries = _checked_entries(archive, len(data))
    files = [info for info in entries if not info.is_dir()]
    if len(files) > max_files:
        raise BundleError(f"the bundle holds {len(files)} files, over the cap of {max_files}")
    return BundleInfo(digest=digest_of(data), size=len(data), files=len(files))


def unpack_bundle(data: bytes, into: Path) -> Path:
    """Unpack a bundle into the directory `into` (created if missing; it must be empty), after
    checking every entry as `check_bundle` does. Nothing is written outside `into`: each
    target is resolved and must lie inside it. Returns `into`."""
    target_root = Path(into)
    if target_root.exists() and (not target_root.is_dir() or any(target_root.iterdir())):
        raise ValueError(f"cannot unpack a bundle into {str(into)!r}: it is not an empty directory")
    target_root.mkdir(parents=True, exist_ok=True)
    root = target_root.resolve()
    with _open(data) as archive:
        for info in _checked_entries(archive, len(data)):
            target = (root / info.filename).resolve()
            if not target.is_relative_to(root) or target == root:
                raise BundleError(
                    f"entry {info.filename!r} would be written outside {str(into)!r}",
                    info.filename,
                )
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as source, open(target, "xb") as sink:
                    while chunk := source.read(1 << 16):
                        sink.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                raise BundleError(
                    f"entry {info.filename!r} cannot be unpacked: {error}", info.filename
                ) from error
            target.chmod(_FILE_MODE)
    return target_root


def runtime_env(
    working_dir: str | Path,
    requirements: Sequence[str] = (),
    env_vars: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Ray runtime environment that ships a code bundle to every worker: `working_dir` is a
    local directory or a local .zip (Ray uploads it and makes it each worker's current
    directory, first on its import path); `requirements` (PEP 508 strings or paths of wheels)
    become Ray's `pip` environment when there are any; `env_vars` are set in every worker."""
    env: dict[str, Any] = {"working_dir": str(working_dir)}
    if requirements:
        env["pip"] = {"packages": list(requirements), "pip_check": False}
    if env_vars:
        env["env_vars"] = {str(key): str(value) for key, value in env_vars.items()}
    return env


def _open(data: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except UnicodeDecodeError as error:
        raise BundleError(
            f"the bundle holds a name marked UTF-8 that is not valid UTF-8: {error}"
        ) from error
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as error:
        raise BundleError(f"the bundle is not a zip file: {error}") from error


def _checked_entries(archive: zipfile.ZipFile, size: int) -> list[zipfile.ZipInfo]:
    entries = archive.infolist()
    seen: dict[str, str] = {}
    directories: set[str] = set()
    total = 0
    for info in entries:
        name = info.orig_filename
        _check_name(info)
        key = name.rstrip("/")
        if key in seen:
            raise BundleError(f"entry {name!r} appears twice in the bundle", name)
        seen[key] = name
        if info.is_dir():
            directories.add(key)
        parts = key.split("/")
        directories.update("/".join(parts[:i]) for i in range(1, len(parts)))
        # The Unix file type in the external attributes (0 when the zip tool wrote none).
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise BundleError(
                f"entry {name!r} is a symlink: a bundle holds regular files only", name
            )
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise BundleError(f"entry {name!r} is not a regular file (type {kind:o})", name)
        total += info.file_size
    for key in seen:
        if key in directories and not seen[key].endswith("/"):
            raise BundleError(
                f"entry {seen[key]!r} is a file and also a directory of other entries",
                seen[key],
            )
    allowed = MAX_EXPANSION * max(size, EXPANSION_FLOOR)
    if total > allowed:
        raise BundleError(
            f"the bundle's files add up to {total} bytes unpacked, over {MAX_EXPANSION} times "
            f"its size ({allowed} bytes): refused as a zip bomb"
        )
    return entries


def _check_name(info: zipfile.ZipInfo) -> None:
    name = info.orig_filename
    if "\x00" in name:
        raise BundleError(f"entry {name!r} has a NUL character in its name", name)
    if not name.isascii() and not info.flag_bits & _UTF8_FLAG:
        raise BundleError(
            f"entry {name!r} has a name that is not ASCII and not marked UTF-8 (flag bit 11)",
            name,
        )
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise BundleError(f"entry {name!r} is an absolute path", name)
    if "\\" in name:
        raise BundleError(f"entry {name!r} has a backslash in its name; use '/'", name)
    parts = name.rstrip("/").split("/") if name != "/" else [""]
    if ".." in parts:
        raise BundleError(f"entry {name!r} has a '..' component", name)
    if any(part in ("", ".") for part in parts):
        raise BundleError(f"entry {name!r} has an empty or '.' component", name)
