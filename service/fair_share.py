"""How many trials each running sweep may run at once: its owner's quotas, and an equal share of
the cluster for every user with a running sweep (max-min fair: what one user cannot use goes to
those who can).

`allocate` is a pure function of what the sweeps ask for, what the cluster has and each user's
quotas; the reconciler calls it every pass and stores each sweep's ``allowance``, which the
sweep's driver reads before it starts a trial (`sweeps.live_budget.BudgetLimiter`). A sweep
whose allowance drops stops no running trial: it starts fewer new ones until it is under it.

Trials that take GPUs share the cluster's GPUs; trials that take none share its CPUs. Slots are
handed out one trial at a time, each to the user it leaves holding the least of the pool (ties:
the earliest submission), then within that user to their sweep left holding the least: shares
stay equal in what users hold, not in trial counts, and nothing is lost to rounding.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.quotas import Quotas

GPU = "GPU"
CPU = "CPU"


@dataclass(frozen=True)
class Demand:
    """A running sweep: who owns it, what one trial takes, and its own concurrency."""

    sweep_id: str
    owner: str
    gpu_per_trial: float
    cpu_per_trial: float
    max_concurrent_trials: int

    @property
    def pool(self) -> str:
        return GPU if self.gpu_per_trial > 0 else CPU

    @property
    def per_trial(self) -> float:
        return self.gpu_per_trial if self.pool == GPU else self.cpu_per_trial


@dataclass(frozen=True)
class Allowance:
    trials: int
    # Why it is below the sweep's own max_concurrent_trials; None when it is not.
    reason: str | None


def allocate(
    demands: Sequence[Demand],
    capacity: Mapping[str, float] | None,
    quotas: Mapping[str, Quotas],
) -> dict[str, Allowance]:
    """Each sweep's allowance. ``demands`` in submission order (it breaks ties); ``capacity``
    the cluster's total {"GPU": n, "CPU": n} (None: unknown, so only the quotas limit);
    ``quotas`` every owner's."""
    given: dict[str, int] = {d.sweep_id: 0 for d in demands}
    held: dict[tuple[str, str], float] = defaultdict(float)  # (pool, user) → resource held
    user_trials: dict[str, int] = defaultdict(int)
    user_gpus: dict[str, float] = defaultdict(float)
    pool_used: dict[str, float] = defaultdict(float)
    order = {d.sweep_id: index for index, d in enumerate(demands)}
    first_of_user: dict[str, int] = {}
    for d in demands:
        first_of_user.setdefault(d.owner, order[d.sweep_id])
    blocked: dict[str, str] = {}  # sweep → what stopped it below its own concurrency

    def fits(d: Demand) -> bool:
        if given[d.sweep_id] >= d.max_concurrent_trials:
            return False
        quota = quotas[d.owner]
        if quota.concurrent_trials is not None and user_trials[d.owner] >= quota.concurrent_trials:
            blocked[d.sweep_id] = f"its owner's concurrent_trials quota ({quota.concurrent_trials})"
            return False
        if quota.gpus is not None and user_gpus[d.owner] + d.gpu_per_trial > quota.gpus + 1e-9:
            blocked[d.sweep_id] = f"its owner's gpus quota ({quota.gpus:g})"
            return False
        total = None if capacity is None else capacity.get(d.pool)
        if total is not None and pool_used[d.pool] + d.per_trial > total + 1e-9:
            users = len({e.owner for e in demands if e.pool == d.pool})
            blocked[d.sweep_id] = (
                f"a fair share of the cluster's {total:g} {d.pool}s among {users} user(s)"
            )
            return False
        return True

    while True:
        candidates = [d for d in demands if fits(d)]
        if not candidates:
            break
        # The trial that leaves its user holding the least of the pool (then: the earliest
        # user; within a user, the sweep left holding the least). Ranking by what a user holds
        # *after* the trial keeps a big trial from lifting its user far past the others.
        chosen = min(
            candidates,
            key=lambda d: (
                held[(d.pool, d.owner)] + d.per_trial,
                first_of_user[d.owner],
                (given[d.sweep_id] + 1) * d.per_trial,
                order[d.sweep_id],
            ),
        )
        given[chosen.sweep_id] += 1
        held[(chosen.pool, chosen.owner)] += chosen.per_trial
        user_trials[chosen.owner] += 1
        user_gpus[chosen.owner] += chosen.gpu_per_trial
        pool_used[chosen.pool] += chosen.per_trial
    return {
        d.sweep_id: Allowance(
            given[d.sweep_id],
            None if given[d.sweep_id] >= d.max_concurrent_trials else blocked.get(d.sweep_id),
        )
        for d in demands
    }
