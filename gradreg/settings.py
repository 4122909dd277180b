"""The environment variables gradreg reads, all in one place (prefix ``GRADREG_``).

Read at call time, not import time, so a process (or a test) can change them.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "GRADREG_CACHE_DIR"
DATA_DIR_ENV = "GRADREG_DATA_DIR"
MIRROR_ENV = "GRADREG_DATA_MIRROR"

DEFAULT_CACHE_DIR = "~/.cache/gradreg"
DEFAULT_DATA_DIR = "data"


def cache_dir() -> Path:
    """Where generated datasets (mnist1d) are cached."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def data_dir() -> Path:
    """The data directory of the file datasets (mnist, fashion_mnist, cifar10), absolute."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser().absolute()


def data_mirror() -> str | None:
    """A base URL that `gradreg data download` uses instead of the official hosts."""
    return os.environ.get(MIRROR_ENV) or None
