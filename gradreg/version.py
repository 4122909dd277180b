"""What every command line shares (gradreg, sweeps, service): the installed version, for
``--version`` and ``gradreg.__version__``, and the exit status of a run stopped by Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "gradreg"  # pyproject.toml's [project] name: one distribution holds all three
NOT_INSTALLED = "unknown (not installed)"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C


def distribution_version() -> str:
    """The installed distribution's version, or `NOT_INSTALLED` when run from a bare checkout."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return NOT_INSTALLED


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version``: print ``<prog> <version>`` on stdout and exit 0."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {distribution_version()}")


def interruptible(prog: str, command: Callable[[], int]) -> int:
    """Run a command line's ``command``; a Ctrl-C that reaches it prints ``<prog>: interrupted``
    (no traceback) and is the exit status `EXIT_INTERRUPTED`."""
    try:
        return command()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
