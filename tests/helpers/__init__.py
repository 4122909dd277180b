"""What tests share that is not a fixture: tests import helpers from here, never from another
test module (fixtures stay in the conftest.py files).

`poll_until` is the one way to wait for something another thread or process will do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    condition: Callable[[], T],
    timeout_s: float,
    what: str,
    interval_s: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call ``condition`` every ``interval_s`` until it returns something true, and return
    that; after ``timeout_s``, raise AssertionError naming ``what`` and the last value, with
    ``detail()`` (a log's tail, say) if given.

    ``condition`` is called once more at the deadline, so a slow poll still gets its last
    look. Use it to wait for what another thread or process does, not to let time pass:
    where the code under test takes a clock, move a `tests.helpers.clock.ManualClock`.
    """
    if timeout_s <= 0 or interval_s <= 0:
        raise ValueError(f"timeout_s and interval_s must be > 0; got {timeout_s}, {interval_s}")
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            message = f"{what}: not within {timeout_s:g} s (last: {value!r})"
            raise AssertionError(message if detail is None else f"{message}\n{detail()}")
        time.sleep(min(interval_s, left))
