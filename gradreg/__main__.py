"""``python -m gradreg``: the command line of `gradreg.cli.main`, with Ctrl-C as exit status 130."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gradreg.cli.main import main
from gradreg.version import interruptible


def run(argv: Sequence[str] | None = None) -> int:
    return interruptible("gradreg", lambda: main(argv))


if __name__ == "__main__":
    sys.exit(run())
