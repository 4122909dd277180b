"""service.fair_share.allocate: the issue's harness case by hand, the quotas, and on random
clusters the properties that make it fair (checked against brute force where it is small)."""

from __future__ import annotations

import itertools
import random

import pytest

from service.fair_share import CPU, GPU, Demand, allocate
from service.quotas import Quotas

OPEN = Quotas(active_sweeps=10, queued_sweeps=10)


def gpu_sweep(sweep_id: str, owner: str, concurrent: int, gpu: float = 0.5) -> Demand:
    return Demand(sweep_id, owner, gpu, 1.0, concurrent)


def test_one_user_fills_the_cluster_and_a_second_gets_half_of_it():
    cluster = {GPU: 2.0, CPU: 8.0}  # two workers with a GPU each; trials take half a GPU
    alone = allocate([gpu_sweep("a", "alice", 8)], cluster, {"alice": OPEN})
    assert alone["a"].trials == 4
    assert "fair share of the cluster's 2 GPUs among 1 user" in alone["a"].reason

    both = allocate(
        [gpu_sweep("a", "alice", 8), gpu_sweep("b", "bob", 8)],
        cluster,
        {"alice": OPEN, "bob": OPEN},
    )
    assert (both["a"].trials, both["b"].trials) == (2, 2)
    assert "among 2 user(s)" in both["b"].reason


def test_a_share_one_user_cannot_use_goes_to_the_other():
    allowances = allocate(
        [gpu_sweep("a", "alice", 8), gpu_sweep("b", "bob", 1)],
        {GPU: 2.0},
        {"alice": OPEN, "bob": OPEN},
    )
    assert (allowances["a"].trials, allowances["b"].trials) == (3, 1)
    assert allowances["b"].reason is None  # it has all it asked for


def test_a_users_sweeps_share_that_users_part():
    demands = [gpu_sweep("a1", "alice", 8), gpu_sweep("a2", "alice", 8), gpu_sweep("b", "bob", 8)]
    allowances = allocate(demands, {GPU: 4.0}, {"alice": OPEN, "bob": OPEN})
    assert allowances["b"].trials == 4  # half the 8 slots
    assert (allowances["a1"].trials, allowances["a2"].trials) == (2, 2)


def test_quotas_hold_a_user_below_their_share_and_say_which():
    gpus = Quotas(active_sweeps=10, queued_sweeps=10, gpus=1.0)
    trials = Quotas(active_sweeps=10, queued_sweeps=10, concurrent_trials=3)
    allowances = allocate(
        [gpu_sweep("a", "alice", 8), gpu_sweep("b1", "bob", 2), gpu_sweep("b2", "bob", 2)],
        None,  # cluster unknown: only quotas limit
        {"alice": gpus, "bob": trials},
    )
    assert allowances["a"].trials == 2  # 1 GPU / 0.5
    assert allowances["a"].reason == "its owner's gpus quota (1)"
    assert allowances["b1"].trials + allowances["b2"].trials == 3
    assert "concurrent_trials quota (3)" in (allowances["b1"].reason or allowances["b2"].reason)


def test_without_a_cluster_or_quotas_each_sweep_runs_its_own_concurrency():
    allowances = allocate(
        [gpu_sweep("a", "alice", 5), Demand("c", "carol", 0.0, 2.0, 3)],
        None,
        {"alice": OPEN, "carol": OPEN},
    )
    assert {k: (v.trials, v.reason) for k, v in allowances.items()} == {
        "a": (5, None),
        "c": (3, None),
    }


def test_cpu_trials_share_the_cpus_and_gpu_trials_the_gpus():
    allowances = allocate(
        [
            gpu_sweep("g", "alice", 8, gpu=1.0),
            Demand("c1", "alice", 0, 2.0, 8),
            Demand("c2", "bob", 0, 2.0, 8),
        ],
        {GPU: 2.0, CPU: 8.0},
        {"alice": OPEN, "bob": OPEN},
    )
    assert allowances["g"].trials == 2
    assert (allowances["c1"].trials, allowances["c2"].trials) == (2, 2)


def random_case(rng: random.Random) -> tuple[list[Demand], dict[str, float], dict[str, Quotas]]:
    users = [f"u{i}" for i in range(rng.randint(1, 4))]
    demands = [
        Demand(
            f"s{i}",
            rng.choice(users),
            rng.choice([0.25, 0.5, 1.0]),
            1.0,
            rng.randint(1, 6),
        )
        for i in range(rng.randint(1, 6))
    ]
    quotas = {
        user: Quotas(
            active_sweeps=10,
            queued_sweeps=10,
            concurrent_trials=rng.choice([None, 1, 3, 5]),
            gpus=rng.choice([None, 1.0, 2.0]),
        )
        for user in users
    }
    return demands, {GPU: float(rng.randint(1, 4))}, quotas


def within_limits(
    counts: dict[str, int], demands: list[Demand], capacity: float, quotas: dict[str, Quotas]
) -> bool:
    if sum(counts[d.sweep_id] * d.gpu_per_trial for d in demands) > capacity + 1e-9:
        return False
    for user, quota in quotas.items():
        mine = [d for d in demands if d.owner == user]
        trials = sum(counts[d.sweep_id] for d in mine)
        gpus = sum(counts[d.sweep_id] * d.gpu_per_trial for d in mine)
        if quota.concurrent_trials is not None and trials > quota.concurrent_trials:
            return False
        if quota.gpus is not None and gpus > quota.gpus + 1e-9:
            return False
    return all(counts[d.sweep_id] <= d.max_concurrent_trials for d in demands)


@pytest.mark.parametrize("seed", range(300))
def test_on_random_clusters_it_is_feasible_work_conserving_and_max_min_fair(seed):
    demands, capacity, quotas = random_case(random.Random(seed))
    allowances = allocate(demands, capacity, quotas)
    counts = {d.sweep_id: allowances[d.sweep_id].trials for d in demands}
    assert within_limits(counts, demands, capacity[GPU], quotas)
    # Work-conserving: no sweep could take one more trial within every limit.
    for d in demands:
        assert not within_limits(
            {**counts, d.sweep_id: counts[d.sweep_id] + 1}, demands, capacity[GPU], quotas
        ), (seed, d)
    # Max-min fair between users: no trial of one user's could move to a user holding less,
    # within every limit, and leave the receiver still holding no more than the giver.
    held = {
        user: sum(counts[d.sweep_id] * d.gpu_per_trial for d in demands if d.owner == user)
        for user in quotas
    }
    for giver, taker in itertools.permutations(demands, 2):
        if giver.owner == taker.owner or counts[giver.sweep_id] == 0:
            continue
        moved = {
            **counts,
            giver.sweep_id: counts[giver.sweep_id] - 1,
            taker.sweep_id: counts[taker.sweep_id] + 1,
        }
        if not within_limits(moved, demands, capacity[GPU], quotas):
            continue
        after_taker = held[taker.owner] + taker.gpu_per_trial
        after_giver = held[giver.owner] - giver.gpu_per_trial
        assert after_taker > after_giver + 1e-9, (seed, giver, taker, held)
