"""Trial events to a store off Tune's event loop: a bounded queue and one writer thread.

Tune calls the driver's callbacks from its own loop; a store write there (a transaction on a
remote database) stalls scheduling. `TrialWriter.put` only queues the event. The writer thread
hands what is queued to the store as one batch, at most once per ``flush_s``, so a busy sweep
costs one transaction per flush rather than one per report. The queue is bounded: when the
store falls that far behind, `put` waits (Tune slows down) rather than dropping events.

A failed write is not retried: the error is raised by the next `put` (in Tune's callback, which
ends the sweep loudly, as a failed synchronous write did) and by `close`. `close` writes
everything still queued before it returns, so the driver reports its outcome only after every
trial's last event is in the store. A driver killed in between loses at most the queue; the
next attempt's outcome writes every trial's final state from Tune's saved state.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from sweeps.records import TrialEvent

MAX_BATCH = 500
MAX_QUEUED = 10_000

_CLOSE = object()


class Wakeup(Protocol):
    """What the writer thread waits on between flushes: `threading.Event` or a test's own."""

    def set(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class TrialWriter:
    """``write`` takes each batch of events on a thread of the writer's own.

    ``clock`` (seconds, monotonic) times the flush interval, and ``wakeup`` is what the thread
    waits on in between (`close` sets it); a test passes a clock it moves itself.
    """

    def __init__(
        self,
        write: Callable[[Sequence[TrialEvent]], None],
        *,
        flush_s: float = 0.25,
        max_batch: int = MAX_BATCH,
        max_queued: int = MAX_QUEUED,
        clock: Callable[[], float] = time.monotonic,
        wakeup: Wakeup | None = None,
    ) -> None:
        if flush_s < 0 or max_batch < 1 or max_queued < 1:
            raise ValueError(
                f"flush_s must be >= 0 and max_batch, max_queued >= 1; got {flush_s}, "
                f"{max_batch}, {max_queued}"
            )
        self._write = write
        self._flush_s = flush_s
        self._max_batch = max_batch
        self._clock = clock
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queued)
        self._error: BaseException | None = None
        self._closed = False
        self._closing: Wakeup = threading.Event() if wakeup is None else wakeup
        self.batches = 0  # how many writes the store has taken (for tests and benchmarks)
        self.full_waits = 0  # how many puts found the queue full and waited (the store lagged)
        self._thread = threading.Thread(target=self._run, name="trial-writer", daemon=True)
        self._thread.start()

    def put(self, event: TrialEvent) -> None:
        """Queue ``event``, waiting while the queue is full; raises the writer's error if an
        earlier write failed."""
        self._raise_failure()
        if self._closed:
            raise RuntimeError("the trial writer is closed")
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.full_waits += 1
            self._queue.put(event)

    def close(self) -> None:
        """Write what is queued, stop the thread, and raise a write's error if one failed."""
        if not self._closed:
            self._closed = True
            self._queue.put(_CLOSE)
            self._closing.set()  # no waiting out the flush interval
            self._thread.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing trial events to the store failed: {self._error!r}") from (
                self._error
            )

    def _run(self) -> None:
        closing = False
        while not closing:
            batch: list[TrialEvent] = []
            item = self._queue.get()
            while True:
                if item is _CLOSE:
                    closing = True
                else:
                    batch.append(item)  # type: ignore[arg-type]
                if closing or len(batch) >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if not batch:
                continue
            started = self._clock()
            if self._error is None:
                try:
                    self._write(batch)
                    self.batches += 1
                except BaseException as error:  # kept for the driver's thread to raise
                    self._error = error
            # Coalesce the reports of the next flush_s into one transaction.
            rest = self._flush_s - (self._clock() - started)
            if rest > 0 and not closing:
                self._closing.wait(rest)
