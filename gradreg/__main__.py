"""``python -m gradreg``: the command line of `gradreg.cli.main`, with Ctrl-C as exit status 130."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gradreg.cli.main import main
from gradreg.version import EXIT_INTERRUPTED


def run(argv: Sequence[str] | None = None) -> int:
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("gradreg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(run())
