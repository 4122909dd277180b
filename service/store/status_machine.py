"""The status machine of a sweep: which status may follow which (`TRANSITIONS`), what each
transition stamps, and the status a driver's outcome leaves the sweep in (`outcome_target`).

Every function here that writes is one transaction (`service.store.transactions`); the
``apply_*`` ones write inside a transaction their caller opened.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.statuses import SWEEP_STATUSES, TERMINAL
from service.store.models import Sweep, utcnow
from service.store.transactions import SweepNotFound, locked, reload, update_row, writing
from service.store.trial_queries import interrupt_trials
from sweeps.records import OUTCOME_STATUSES

TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"pending", "cancelled"}),  # its owner's quota has room
    "pending": frozenset({"queued", "submitted", "cancelled"}),  # queued: a quota lowered
    "submitted": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "cancelling"}),
    "cancelling": frozenset({"cancelled"}),
    "succeeded": frozenset({"pending"}),  # extend
    "failed": frozenset({"pending"}),  # resume, extend
    "cancelled": frozenset({"pending"}),  # resume, extend
}
# An ended sweep's allowance_reason (its allowance is 0).
ENDED = "the sweep has ended"
# What a resume continues: a sweep that ended without finishing. One that succeeded goes on
# only with more budget (`extend`).
RESUMABLE: tuple[str, ...] = ("failed", "cancelled")
# What callers may set along with a transition (or alone, with `update_sweep`).
SETTABLE_FIELDS = frozenset(
    {
        "reason",
        "submission_id",
        "mlflow_experiment_id",
        "mlflow_parent_run_id",
        "tracking_uri",
        "cancel_requested",
        "best",
        "best_basis",
        "ensemble",
        "registered_model",
        "warm_start",
        "allowance",
        "allowance_reason",
    }
)


class InvalidTransition(ValueError):
    def __init__(
        self, sweep_id: str, current: str, target: str, sources: Collection[str] | None = None
    ) -> None:
        self.sweep_id = sweep_id
        self.current = current
        self.target = target
        self.allowed = sorted(TRANSITIONS.get(current, ()))
        if sources is not None:  # a change that takes the transition from some statuses only
            why = f"only a sweep that is {' or '.join(sorted(sources))} can"
        else:
            why = f"allowed from {current}: {', '.join(self.allowed) or 'none (it is final)'}"
        super().__init__(f"sweep {sweep_id} is {current}; it cannot become {target} ({why})")


def _settable(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - SETTABLE_FIELDS
    if unknown:
        raise ValueError(
            f"cannot set {', '.join(sorted(unknown))} on a sweep; "
            f"settable: {', '.join(sorted(SETTABLE_FIELDS))}"
        )
    return dict(fields)


def _stamps(target: str) -> dict[str, Any]:
    now = utcnow()
    if target == "submitted":
        return {"submitted_at": now}
    if target == "running":
        return {"started_at": now}
    if target in TERMINAL:
        # An ended sweep holds no share of the cluster, whenever the reconciler last looked.
        return {"finished_at": now, "allowance": 0, "allowance_reason": ENDED}
    if target == "pending":  # resume or extend; from queued, the same attempt is admitted
        return {
            "attempt": sa.case(
                (Sweep.status.in_(TERMINAL), Sweep.attempt + 1), else_=Sweep.attempt
            ),
            "cancel_requested": False,
            "reason": None,
            "finished_at": None,
            # Its share is the reconciler's to give again once it runs.
            "allowance": None,
            "allowance_reason": None,
        }
    return {}


def apply_transition(
    session: Session,
    sweep_id: str,
    target: str,
    fields: Mapping[str, Any],
    only_from: Collection[str] | None = None,
) -> Sweep:
    if target not in SWEEP_STATUSES:
        raise ValueError(f"unknown sweep status {target!r}; known: {', '.join(SWEEP_STATUSES)}")
    sources = {source for source, targets in TRANSITIONS.items() if target in targets}
    if only_from is not None:
        sources &= set(only_from)
    values = {**_stamps(target), **_settable(fields), "status": target}
    # The status check is part of the UPDATE, so of two racing writers only one can win.
    if not update_row(session, sweep_id, values, Sweep.status.in_(sources)):
        current = session.scalar(sa.select(Sweep.status).where(Sweep.id == sweep_id))
        if current is None:
            raise SweepNotFound(sweep_id)
        restricted = sources if only_from is not None and current in TRANSITIONS else None
        if restricted is not None and target in TRANSITIONS[current]:
            raise InvalidTransition(sweep_id, current, target, restricted)
        raise InvalidTransition(sweep_id, current, target)
    if target in TERMINAL:
        # Nothing runs for a finished sweep: a trial still marked running lost its driver.
        why = fields.get("reason") or "no reason given"
        interrupt_trials(session, sweep_id, f"the sweep became {target} while it ran: {why}")
    return reload(session, sweep_id)


def transition(session: Session, sweep_id: str, to: str, **fields: Any) -> Sweep:
    """Move a sweep to status ``to`` (see `TRANSITIONS`), setting ``fields`` with it.

    submitted_at, started_at and finished_at are set on the transitions into submitted, running
    and a final status; resuming (failed|cancelled → pending) adds one to ``attempt`` and clears
    ``cancel_requested``, ``reason`` and ``finished_at``.
    """
    with writing(session):
        return apply_transition(session, sweep_id, to, fields)


def resume(session: Session, sweep_id: str) -> Sweep:
    """A failed or cancelled sweep's next attempt: it becomes pending (see `transition`)."""
    with writing(session):
        return apply_transition(session, sweep_id, "pending", {}, only_from=RESUMABLE)


def extend(
    session: Session,
    sweep_id: str,
    spec: Mapping[str, Any],
    changes: Mapping[str, list[Any]],
    reason: str,
) -> Sweep:
    """A sweep that ended (succeeded, failed or cancelled) goes on as its next attempt under
    ``spec``, its budget raised by ``changes`` (the caller checked them:
    `sweeps.spec.budget.extended`)."""
    with writing(session):
        sweep = apply_transition(
            session, sweep_id, "pending", {"reason": reason}, only_from=TERMINAL
        )
        history = [*sweep.budget_changes, _budget_change("extend", changes)]
        update_row(session, sweep_id, {"spec": dict(spec), "budget_changes": history}, bump=False)
        return reload(session, sweep_id)


# Whose budget may change while it runs (or before it does); an ended one is extended instead.
BUDGET_CHANGEABLE: tuple[str, ...] = ("queued", "pending", "submitted", "running")


def change_budget(
    session: Session, sweep_id: str, spec: Mapping[str, Any], changes: Mapping[str, list[Any]]
) -> Sweep:
    """A sweep that has not ended runs on under ``spec``, its budget changed by ``changes``
    (the caller checked them); its driver takes the change before it starts another trial."""
    with writing(session):
        sweep = locked(session, sweep_id)
        if sweep.status not in BUDGET_CHANGEABLE:
            raise InvalidBudgetChange(sweep_id, sweep.status)
        history = [*sweep.budget_changes, _budget_change("change", changes)]
        update_row(session, sweep_id, {"spec": dict(spec), "budget_changes": history})
        return reload(session, sweep_id)


def _budget_change(kind: str, changes: Mapping[str, list[Any]]) -> dict[str, Any]:
    return {"at": utcnow().isoformat(), "kind": kind, "changes": dict(changes)}


class InvalidBudgetChange(ValueError):
    def __init__(self, sweep_id: str, status: str) -> None:
        how = "extend it (POST .../extend)" if status in TERMINAL else "wait until it has ended"
        super().__init__(
            f"sweep {sweep_id} is {status}: its budget changes while it is "
            f"{' or '.join(BUDGET_CHANGEABLE)}; {how}"
        )


def end_attempt(session: Session, sweep_id: str, reason: str, resubmit: bool) -> Sweep:
    """The sweep's driver ended without a result: the attempt failed, saying why.

    With ``resubmit`` the sweep goes on to pending as its next attempt in the same transaction,
    so no reader (a client following it, the events stream) ever sees the transient failed.
    """
    with writing(session):
        failed = apply_transition(session, sweep_id, "failed", {"reason": reason})
        if not resubmit:
            return failed
        why = f"attempt {failed.attempt + 1} resumes it: {reason}"
        apply_transition(session, sweep_id, "pending", {})
        update_row(session, sweep_id, {"reason": why})
        return reload(session, sweep_id)


def update_sweep(session: Session, sweep_id: str, **fields: Any) -> Sweep:
    """Set fields of a sweep without changing its status."""
    with writing(session):
        if not update_row(session, sweep_id, _settable(fields)):
            raise SweepNotFound(sweep_id)
        return reload(session, sweep_id)


def request_cancel(session: Session, sweep_id: str) -> Sweep:
    """Ask a sweep to stop: one that has not run is cancelled now, a running one is cancelling.

    Asking again is harmless; a sweep that already succeeded or failed cannot be cancelled.
    """
    with writing(session):
        sweep = locked(session, sweep_id)
        if sweep.status in ("cancelling", "cancelled"):
            return sweep
        if sweep.status == "running":
            return apply_transition(
                session, sweep_id, "cancelling", {"cancel_requested": True}, only_from=["running"]
            )
        return apply_transition(
            session,
            sweep_id,
            "cancelled",
            {"cancel_requested": True, "reason": "cancelled before it ran"},
            only_from=["queued", "pending", "submitted"],
        )


def mark_running(session: Session, sweep_id: str, **fields: Any) -> Sweep:
    """The driver has started: submitted (or pending, for a driver started by hand) → running.

    A sweep already running or cancelling (a driver restarted) only takes the ``fields``.
    """
    with writing(session):
        return apply_mark_running(session, sweep_id, fields)


def apply_mark_running(session: Session, sweep_id: str, fields: Mapping[str, Any]) -> Sweep:
    sweep = locked(session, sweep_id)
    if sweep.status in ("running", "cancelling"):
        update_row(session, sweep_id, _settable(fields))
        return reload(session, sweep_id)
    if sweep.status == "pending":
        apply_transition(session, sweep_id, "submitted", {})
    return apply_transition(session, sweep_id, "running", fields)


def outcome_target(status: str, cancel_requested: bool, outcome_status: str) -> str | None:
    """The status a sweep in ``status`` takes when its driver reports ``outcome_status``; None
    when it keeps its status.

    succeeded and failed become that status (cancelled if a cancel was pending: the sweep was
    asked to stop and there is no way from cancelling to anything else). stopped becomes
    cancelled if a cancel was requested; otherwise the status stays and only the reason is kept,
    so the reconciler can resubmit a sweep whose driver stopped unasked.
    """
    if outcome_status not in OUTCOME_STATUSES:
        raise ValueError(
            f"unknown outcome status {outcome_status!r}; known: {', '.join(OUTCOME_STATUSES)}"
        )
    if outcome_status == "stopped":
        return "cancelled" if cancel_requested else None
    return "cancelled" if status == "cancelling" else outcome_status


def apply_outcome(
    session: Session,
    sweep_id: str,
    status: str,
    cancel_requested: bool,
    outcome_status: str,
    reason: str,
    fields: Mapping[str, Any],
) -> Sweep:
    """The driver's end, in the transaction that writes its final trials: the sweep (``status``
    and ``cancel_requested`` as read, locked, when it began) takes `outcome_target`'s status, or
    keeps its own, with ``fields`` and the outcome's ``reason``."""
    target = outcome_target(status, cancel_requested, outcome_status)
    values = {**fields, "reason": reason}
    if target is None or target == status:
        update_row(session, sweep_id, _settable(values))
        return reload(session, sweep_id)
    if status in ("pending", "submitted") and target != "cancelled":
        apply_mark_running(session, sweep_id, {})
    if status == "cancelling" and outcome_status != "stopped":
        values["reason"] = f"cancel requested; the sweep had {outcome_status}: {reason}"
    return apply_transition(session, sweep_id, target, values)
