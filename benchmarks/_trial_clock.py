"""What the sweep benchmarks share: each trial's start and end as the driver saw them (the
trial events of `run_sweep`'s hook), and a figure over repeats as median [min, max]."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from sweeps.records import TrialEvent


@dataclass
class TrialClock:
    """`run_sweep(..., on_trial=clock.seen)`: a trial starts at its first `running` event and
    ends at its `succeeded` one (perf_counter seconds)."""

    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)

    def seen(self, event: TrialEvent) -> None:
        now = time.perf_counter()
        if event.state == "running":
            self.started.setdefault(event.trial_id, now)
        elif event.state == "succeeded":
            self.ended[event.trial_id] = now

    def check(self, counts: dict[str, int], n_trials: int, what: str) -> None:
        """Raise unless all ``n_trials`` succeeded and each was seen to start and to end."""
        if counts != {"succeeded": n_trials} or set(self.started) != set(self.ended):
            raise RuntimeError(f"{what}: the sweep did not finish cleanly: {counts}")

    def by_start(self) -> tuple[list[float], list[float]]:
        """The trials' starts and ends, in the order they started."""
        order = sorted(self.started, key=self.started.__getitem__)
        return [self.started[t] for t in order], [self.ended[t] for t in order]


@dataclass
class TimedSweep:
    called: float  # perf_counter when run_sweep was called
    wall_s: float  # run_sweep's whole call, start-up and wind-down included
    starts: list[float]  # each trial's start and end, in the order they started
    ends: list[float]


def timed_sweep_run(spec: Any, options: Any, n_trials: int) -> TimedSweep:
    """`run_sweep(spec, options)` with every trial's start and end; raises unless all
    ``n_trials`` succeeded."""
    from sweeps import run_sweep

    clock = TrialClock()
    called = time.perf_counter()
    outcome = run_sweep(spec, options, on_trial=clock.seen)
    wall = time.perf_counter() - called
    clock.check(outcome.counts(), n_trials, spec.name)
    starts, ends = clock.by_start()
    return TimedSweep(called, wall, starts, ends)


def spread(values: list[float], unit: str = "", digits: int = 2, sign: str = "") -> str:
    """median [min, max] over the repeats (``sign="+"``: every number signed)."""
    form = f"{sign}.{digits}f"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:{form}}{unit}"
    return f"{median:{form}}{unit} [{min(values):{form}}, {max(values):{form}}]"
