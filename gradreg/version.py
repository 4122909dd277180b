"""The installed version, for every command line's ``--version`` (gradreg, sweeps, service)."""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "gradreg"  # pyproject.toml's [project] name: one distribution holds all three
NOT_INSTALLED = "unknown (not installed)"


def distribution_version() -> str:
    """The installed distribution's version, or `NOT_INSTALLED` when run from a bare checkout."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return NOT_INSTALLED


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version``: print ``<prog> <version>`` on stdout and exit 0."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {distribution_version()}")
