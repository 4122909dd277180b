"""How the service's store and its routes grow with a sweep's trials.

    python benchmarks/sweep_scale_store.py --json store.json

The service's store on SQLite and PostgreSQL, a sweep of 100, 1,000 and 10,000 trials: one
trial report (its own transaction, as `DatabaseSweepStore` writes it), a report in a batch of 50
(the driver's writer batches), the write before migration 0003 (row lock + scan of every trial);
a /trials page of 50 (first, from the middle, top 50 by val_nll), /best, and a follower's events
poll, through the API's own routes in-process. Each figure is printed with its ratio to the
smallest size, in this run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _sweep_scale_common import fmt_ratio, header, parser, percentile, positive_int, write_figures
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service import problems
from service.app import attach_store
from service.routes.sweeps import event_payloads
from service.routes.sweeps import router as sweeps_router
from service.settings import ServiceSettings
from service.store import paging, status_machine, sweep_queries, transactions
from service.store.database import make_engine, upgrade
from service.store.database import session_factory as make_sessions
from service.store.models import Trial
from service.store.sweep_store import DatabaseSweepStore, write_trials
from sweeps.records import TrialEvent, best_trials
from sweeps.spec import Objective

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
FIGURES = (
    "report",
    "report_in_batch_of_50",
    "legacy_report",
    "trials_page_50",
    "trials_page_50_mid",
    "trials_top_50_by_val_nll",
    "best",
    "events_poll",
)


@contextmanager
def store_engine(backend: str, root: Path, postgres_url: str) -> Iterator[sa.Engine]:
    """A migrated store: a SQLite file, or a PostgreSQL schema of its own (dropped after)."""
    if backend == "sqlite":
        engine = make_engine(f"sqlite:///{root / 'store.db'}")
        upgrade(engine)
        try:
            yield engine
        finally:
            engine.dispose()
        return
    base = sa.make_url(postgres_url)
    schema = f"gradreg_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(base.update_query_dict({"options": f"-csearch_path={schema}"}))
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def running_sweep(sessions: sessionmaker[Session], name: str) -> str:
    with sessions() as session:
        sweep, _ = sweep_queries.create_sweep(
            session, {"name": name, "objectives": [{"metric": "val_nll"}]}
        )
        for status in ("submitted", "running"):
            status_machine.transition(session, sweep.id, status)
    return sweep.id


def trial_report(trial_id: str, rng: random.Random, state: str = "running") -> TrialEvent:
    epoch = rng.randint(1, 50)
    metrics = {
        "epoch": float(epoch),
        "val_nll": rng.uniform(0.1, 2.0),
        "val_accuracy": rng.uniform(0.5, 1.0),
        "val_ece": rng.uniform(0.0, 0.2),
        "train_nll": rng.uniform(0.1, 2.0),
    }
    params = {"noise_scale": rng.uniform(1e-3, 1e-1), "prior_variance": rng.uniform(0.1, 10)}
    return TrialEvent("bench", trial_id, f"trial {trial_id}", state, params, metrics, epoch, None)


def legacy_report(session: Session, sweep_id: str, event: TrialEvent) -> None:
    """The per-report write before the store kept its best incrementally (the issue's baseline):
    lock the sweep row, write the trial, load and score every trial of the sweep in Python."""
    objective = Objective(metric="val_nll")
    with transactions.writing(session):
        transactions.locked(session, sweep_id)
        bumped = transactions.bump(session, sweep_id)
        write_trials(session, sweep_id, [event], bumped.version, objective)
        trials = session.scalars(
            sa.select(Trial).where(Trial.sweep_id == sweep_id).order_by(Trial.trial_id)
        )
        best = best_trials([objective], trials, finished_only=False)
        summary = [best[0].summary()] if best else None
        transactions.update_row(session, sweep_id, {"best": summary}, bump=False)


def timed(work: Callable[[], object], repeats: int, per: int = 1) -> dict[str, float]:
    """p50 and p99 ms of ``work`` over ``repeats`` calls, divided by the ``per`` it does."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        samples.append((time.perf_counter() - started) / per)
    return {"p50_ms": 1e3 * statistics.median(samples), "p99_ms": 1e3 * percentile(samples, 99)}


def store_figures(
    store: DatabaseSweepStore,
    sessions: sessionmaker[Session],
    client: TestClient,
    size: int,
    args: argparse.Namespace,
    rng: random.Random,
) -> dict[str, Any]:
    settings = ServiceSettings(api_tokens="bench")
    sweep_id = running_sweep(sessions, f"scale-{size}")
    ids = [f"{uuid.uuid4().hex[:8]}_{i:05d}" for i in range(size)]
    for start in range(0, size, 500):
        store.record_trials(sweep_id, [trial_report(t, rng) for t in ids[start : start + 500]])
    with sessions() as session:
        # Table statistics, as autovacuum keeps them on a live store. Fresh from an empty
        # table, PostgreSQL's planner takes the sweep for one row and sorts instead of
        # reading the (sweep, objective) index: 0.5 ms at 1,000 trials.
        session.execute(sa.text("ANALYZE trials"))
        session.commit()
    base = f"/v1/sweeps/{sweep_id}"
    middle, cursor = 0, None  # the cursor of the sweep's middle page
    while middle < size // 2:
        params = {"limit": min(paging.MAX_PAGE, size // 2 - middle), "cursor": cursor}
        page = client.get(f"{base}/trials", params={k: v for k, v in params.items() if v}).json()
        middle, cursor = middle + len(page["items"]), page["next_cursor"]

    def get(path: str, **params: object) -> None:
        response = client.get(path, params=params)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text}")

    def legacy() -> None:
        with sessions() as session:
            legacy_report(session, sweep_id, trial_report(rng.choice(ids), rng))

    def follow() -> None:
        # One poll of the events stream one report behind: the changed trials and the sweep
        # (with its counts), as JSON-ready payloads.
        seen: dict[str, Any] = {}
        event_payloads(sessions, settings, sweep_id, version_before_last_report, seen)

    figures = {
        "report": timed(
            lambda: store.record_trials(sweep_id, [trial_report(rng.choice(ids), rng)]),
            args.store_reports,
        ),
        "report_in_batch_of_50": timed(
            lambda: store.record_trials(
                sweep_id, [trial_report(rng.choice(ids), rng) for _ in range(50)]
            ),
            max(5, args.store_reports // 20),
            per=50,
        ),
        "legacy_report": timed(legacy, max(10, args.store_reports // 4)),
        "trials_page_50": timed(lambda: get(f"{base}/trials", limit=50), args.store_requests),
        "trials_page_50_mid": timed(
            lambda: get(f"{base}/trials", limit=50, cursor=cursor),
            args.store_requests,
        ),
        "trials_top_50_by_val_nll": timed(
            lambda: get(f"{base}/trials", limit=50, order_by="val_nll"), args.store_requests
        ),
        "best": timed(lambda: get(f"{base}/best"), args.store_requests),
    }
    with sessions() as session:
        version_before_last_report = sweep_queries.get_sweep(session, sweep_id).version
    store.record_trials(sweep_id, [trial_report(rng.choice(ids), rng)])
    figures["events_poll"] = timed(follow, args.store_requests)
    return figures


def store_level(args: argparse.Namespace) -> dict[str, Any]:
    """Per-report store cost, a /trials page, /best and an events poll, at each sweep size, on
    each database; ratios to the smallest size. A report is one event in its own transaction,
    the driver's worst case (its writer batches what arrives within a flush); "legacy" is the
    write before migration 0003 (row lock, then a scan of every trial), in the same run."""
    rng = random.Random(args.seed)
    figures: dict[str, Any] = {}
    sizes = sorted(set(args.store_sizes))
    print(
        "\n== store: ms per call, p50 / p99 over "
        f"{args.store_reports} reports and {args.store_requests} requests; ratios (of p50) to "
        f"{sizes[0]} trials",
        flush=True,
    )
    for backend in args.store_backends:
        with (
            tempfile.TemporaryDirectory() as tmp,
            store_engine(backend, Path(tmp), args.postgres_url) as engine,
        ):
            sessions = make_sessions(engine)
            app = FastAPI()
            problems.install(app)
            app.include_router(sweeps_router)
            attach_store(app, ServiceSettings(api_tokens="bench"), sessions, b"bench-token-key")
            client = TestClient(app, headers={"Authorization": "Bearer bench"})
            baseline: dict[str, Any] = {}
            for size in sizes:
                row = store_figures(DatabaseSweepStore(engine), sessions, client, size, args, rng)
                baseline = baseline or row
                for figure in FIGURES:
                    row[figure]["ratio_p50"] = row[figure]["p50_ms"] / baseline[figure]["p50_ms"]
                figures[f"{backend}/{size}"] = row
                print(
                    f"  {backend:<10} {size:>6} trials: report {row['report']['p50_ms']:.2f} / "
                    f"{row['report']['p99_ms']:.2f} ({fmt_ratio(row['report']['ratio_p50'])})"
                    f", in a batch of 50 {row['report_in_batch_of_50']['p50_ms']:.3f}, legacy "
                    f"{row['legacy_report']['p50_ms']:.2f} "
                    f"({fmt_ratio(row['legacy_report']['ratio_p50'])}); /trials page of 50 "
                    f"{row['trials_page_50']['p99_ms']:.1f} p99, from the middle "
                    f"{row['trials_page_50_mid']['p99_ms']:.1f}, top 50 by val_nll "
                    f"{row['trials_top_50_by_val_nll']['p99_ms']:.1f} "
                    f"({fmt_ratio(row['trials_top_50_by_val_nll']['ratio_p50'])}); /best "
                    f"{row['best']['p99_ms']:.1f}; events poll {row['events_poll']['p99_ms']:.1f}",
                    flush=True,
                )
    return figures


def main() -> None:
    options = parser(__doc__)
    options.add_argument(
        "--store-backends",
        nargs="+",
        choices=("sqlite", "postgresql"),
        default=["sqlite", "postgresql"],
    )
    options.add_argument("--store-sizes", nargs="+", type=positive_int, default=[100, 1000, 10000])
    options.add_argument(
        "--store-reports", type=positive_int, default=400, help="timed single reports"
    )
    options.add_argument(
        "--store-requests", type=positive_int, default=200, help="timed API requests"
    )
    options.add_argument("--postgres-url", default=POSTGRES_URL)
    args = options.parse_args()
    header("store", ["sqlalchemy", "fastapi"])
    write_figures("store", args, store_level(args))


if __name__ == "__main__":
    main()
