"""Files written whole or not at all: the atomic replace, and the owner-only write built on it.

Every layer writes through these: gradreg's dataset cache and downloads, the service's secrets
and tokens, the local cluster's credentials. A reader sees the old file or the whole new one,
never a part, and a failed write leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

SHARED = 0o644  # a cache's or a data directory's files: others on the machine read them
PRIVATE = 0o600  # secrets: the owner only


def replace_atomically(
    destination: Path,
    write: Callable[[IO[bytes]], object],
    *,
    mode: int = SHARED,
    check: Callable[[Path], object] | None = None,
    exclusive: bool = False,
) -> None:
    """Write ``destination`` in one step: ``write`` fills a temporary file beside it (created
    readable by its owner only), ``check`` may read the finished file and raise, then the file
    gets ``mode`` and is renamed into place.

    ``exclusive``: never replace an existing ``destination``; a FileExistsError says it is
    there (another process wrote it first). Whatever fails, the temporary file is removed and
    the error propagates; ``destination``'s folder must exist.
    """
    fd, name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp"
    )
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        if check is not None:
            check(temp)
        temp.chmod(mode)
        if exclusive:
            os.link(temp, destination)  # a link never replaces: FileExistsError
        else:
            os.replace(temp, destination)
    finally:
        temp.unlink(missing_ok=True)


def write_private(path: Path, text: str, *, exclusive: bool = False) -> Path:
    """Write ``text`` to ``path`` readable by its owner only (0600), whole or not at all,
    creating its folder; ``exclusive`` as in `replace_atomically`. Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    replace_atomically(path, lambda handle: handle.write(data), mode=PRIVATE, exclusive=exclusive)
    return path
