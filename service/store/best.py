"""A sweep's best as the store keeps it while the sweep runs, by the one rule for best
(`sweeps.records`), and what it is (its basis, `service.statuses.BEST_BASES`).

- One objective: the best so far by latest report (`best_trials` with ``finished_only=False``:
  running trials count, a failed one never): one query on the (sweep, objective) index.
- Several: the Pareto set of the finished trials (`SCORED_STATES`: their metrics are final),
  kept one finished trial at a time (`records.pareto_update`), from the set stored before, so a
  resumed sweep continues it. A member whose state or metrics change, or a set stored before
  its basis was kept, is rebuilt from the finished trials.

When the driver ends, its outcome's best replaces it (`sweep_store.record_outcome`): the best
finished trial, or the Pareto set of the finished trials, which is the set the store held.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.statuses import BEST_BY_LATEST_REPORT, BEST_FINISHED, PARETO_OF_FINISHED
from service.store.models import SUMMARY_KEYS, Trial
from service.store.transactions import update_row
from sweeps.records import SCORED_STATES, Goal, best_trials, pareto_update

_SUMMARY = [getattr(Trial, key) for key in SUMMARY_KEYS]


def basis_while_running(objective_count: int) -> str:
    """What the store keeps as a sweep's best until its driver reports its outcome."""
    return PARETO_OF_FINISHED if objective_count > 1 else BEST_BY_LATEST_REPORT


def basis_of_outcome(objective_count: int) -> str:
    """What a driver's outcome gives as the sweep's best (`records.best_trials`)."""
    return PARETO_OF_FINISHED if objective_count > 1 else BEST_FINISHED


@dataclass(frozen=True)
class Member:
    """A trial's summary as `Sweep.best` holds it, scored as a trial (state, metrics)."""

    summary: Mapping[str, Any]

    @property
    def state(self) -> str:
        return str(self.summary["state"])

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.summary.get("metrics") or {})


def refresh(
    session: Session,
    sweep_id: str,
    objectives: Sequence[Goal],
    stored: tuple[list[dict[str, Any]] | None, str | None],
    states: Mapping[str, str],
) -> None:
    """Keep the sweep's best after its trials took ``states`` (trial id → state written) in
    this transaction; ``stored`` is the sweep's (best, basis) before them. Writes only if
    either changed."""
    if len(objectives) == 1:
        found = _best_by_latest_report(session, sweep_id)
    else:
        found = _pareto_set(session, sweep_id, objectives, stored, states)
    basis = basis_while_running(len(objectives))
    if (found, basis) != stored:
        update_row(session, sweep_id, {"best": found, "best_basis": basis}, bump=False)


def _best_by_latest_report(session: Session, sweep_id: str) -> list[dict[str, Any]] | None:
    """The trial with the lowest loss (`Trial.objective`, the first objective's loss by latest
    report, None for a failed trial): one lookup on the (sweep, objective) index."""
    best = (
        session.execute(
            sa.select(*_SUMMARY)
            .where(Trial.sweep_id == sweep_id, Trial.objective.is_not(None))
            .order_by(Trial.objective, Trial.trial_id)
            .limit(1)
        )
        .mappings()
        .one_or_none()
    )
    return None if best is None else [summary_of(best)]


def _pareto_set(
    session: Session,
    sweep_id: str,
    objectives: Sequence[Goal],
    stored: tuple[list[dict[str, Any]] | None, str | None],
    states: Mapping[str, str],
) -> list[dict[str, Any]] | None:
    """The stored set with the trials that finished now added (`pareto_update`); rebuilt from
    every finished trial when it cannot be kept one trial at a time."""
    documents, basis = stored
    if basis != PARETO_OF_FINISHED:  # stored before the basis was kept: another rule's best
        return _rebuilt(session, sweep_id, objectives)
    members = [Member(document) for document in documents or []]
    by_id = {member.summary["trial_id"]: member for member in members}
    finished = {trial_id for trial_id, state in states.items() if state in SCORED_STATES}
    touched = finished | (by_id.keys() & states.keys())
    if not touched:
        return documents
    rows = {row.summary["trial_id"]: row for row in _read(session, sweep_id, touched)}
    for trial_id, member in by_id.items():
        row = rows.get(trial_id)
        if row is None:
            continue
        if (row.state, row.metrics) != (member.state, member.metrics):
            # A finished trial's metrics are final; if they changed, or it is no longer
            # finished, the trials it kept out may belong in the set: start again.
            return _rebuilt(session, sweep_id, objectives)
    # Members keep their place (a new run id, say, is taken); finished trials join in order.
    front = [rows.get(member.summary["trial_id"], member) for member in members]
    for trial_id in sorted(finished - by_id.keys()):
        front = pareto_update(objectives, front, rows[trial_id])
    return [dict(member.summary) for member in front] or None


def _rebuilt(
    session: Session, sweep_id: str, objectives: Sequence[Goal]
) -> list[dict[str, Any]] | None:
    """`best_trials` of the sweep's finished trials, in the order of their names (as the
    driver's outcome lists them)."""
    rows = session.execute(
        sa.select(*_SUMMARY)
        .where(Trial.sweep_id == sweep_id, Trial.state.in_(SCORED_STATES))
        .order_by(Trial.name, Trial.trial_id)
    )
    found = best_trials(objectives, [Member(summary_of(row)) for row in rows.mappings()])
    return [dict(member.summary) for member in found] or None


def _read(session: Session, sweep_id: str, trial_ids: Collection[str]) -> list[Member]:
    rows = session.execute(
        sa.select(*_SUMMARY).where(Trial.sweep_id == sweep_id, Trial.trial_id.in_(trial_ids))
    )
    return [Member(summary_of(row)) for row in rows.mappings()]


def summary_of(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A trial row's summary as `Sweep.best` stores it (`models.SUMMARY_KEYS`)."""
    return {key: row[key] for key in SUMMARY_KEYS}
