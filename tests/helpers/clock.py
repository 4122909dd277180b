"""A clock that moves only when a test moves it, and events that wait on it."""

from __future__ import annotations

import threading

STALL_S = 10.0  # real seconds a wait may block on a clock nobody moves before it fails


class ManualClock:
    """Seconds that pass when `advance` says so; call it to read them (``clock()``).

    Code under test takes it as its clock and `event()` as what it waits on: a wait with a
    timeout returns when the event is set or the clock has passed the timeout, whatever the
    real time. `wait_for_naps` lets a test continue once a thread is waiting on the clock, and
    `deadlines` says until when each waits. A wait that nothing ends within ``stall_s`` real
    seconds raises AssertionError in the waiting thread, so a broken test fails, not hangs.
    """

    def __init__(self, start: float = 0.0, stall_s: float = STALL_S) -> None:
        self._now = start
        self._changed = threading.Condition()
        self._waiting: list[float | None] = []
        self.stall_s = stall_s
        self.naps = 0  # waits begun

    def __call__(self) -> float:
        with self._changed:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock does not go back; got {seconds}")
        with self._changed:
            self._now += seconds
            self._changed.notify_all()

    def event(self) -> ManualEvent:
        return ManualEvent(self)

    def deadlines(self) -> list[float | None]:
        """The clock time each waiting thread waits until (None: no timeout), in order."""
        with self._changed:
            return sorted(self._waiting, key=lambda d: float("inf") if d is None else d)

    def wait_for_naps(self, count: int) -> None:
        """Return once ``count`` waits have begun since the clock was made (the newest of
        them may still be waiting)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.naps >= count, self.stall_s):
                raise AssertionError(
                    f"{count} waits on the clock expected within {self.stall_s:g} s of real "
                    f"time; {self.naps} began"
                )


class ManualEvent:
    """`threading.Event`'s set, is_set and wait, with wait's timeout on a `ManualClock`."""

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock
        self._set = False

    def set(self) -> None:
        with self._clock._changed:
            self._set = True
            self._clock._changed.notify_all()

    def is_set(self) -> bool:
        with self._clock._changed:
            return self._set

    def wait(self, timeout: float | None = None) -> bool:
        clock = self._clock
        with clock._changed:
            deadline = None if timeout is None else clock._now + timeout
            clock._waiting.append(deadline)
            clock.naps += 1
            clock._changed.notify_all()
            try:
                over = clock._changed.wait_for(
                    lambda: self._set or (deadline is not None and clock._now >= deadline),
                    clock.stall_s,
                )
                if not over:
                    raise AssertionError(
                        f"a wait until {deadline} on the manual clock (now {clock._now}) was "
                        f"neither ended by the clock nor by the event within {clock.stall_s:g} "
                        "s of real time"
                    )
                return self._set
            finally:
                clock._waiting.remove(deadline)
                clock._changed.notify_all()
