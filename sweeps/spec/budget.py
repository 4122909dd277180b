"""Changing a sweep's budget after it started: what an extension may change (`extended`), what
a change while it runs may (`changed`), and how a change is recorded (`budget_changes`).

An extension continues a sweep (finished or not) as a new attempt with more to spend: it only
raises ``max_trials``, ``time_budget_s`` and ``max_failed_trials`` (null is unlimited, so it
raises any number). A change while the sweep runs sets ``max_concurrent_trials``,
``max_trials`` and ``time_budget_s`` either way (`sweeps.live_budget`). The caps apply to both.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError

from sweeps.spec.checks import admitted, in_force
from sweeps.spec.errors import SpecError, SpecIssue
from sweeps.spec.limits import Limits
from sweeps.spec.model import Budget, SweepSpec

EXTENDABLE: tuple[str, ...] = ("max_trials", "time_budget_s", "max_failed_trials")
CHANGEABLE: tuple[str, ...] = ("max_concurrent_trials", "max_trials", "time_budget_s")
__all__ = [
    "CHANGEABLE",
    "EXTENDABLE",
    "budget_changes",
    "changed",
    "describe_changes",
    "extended",
    "in_force",
    "raises",
]


def extended(spec: SweepSpec, changes: Mapping[str, Any], limits: Limits) -> SweepSpec:
    """``spec`` with its budget raised by ``changes`` (some of `EXTENDABLE`), checked under
    ``limits``; `SpecError` names each field that is unknown, lowered, or over a cap."""
    raised = _rebudgeted(spec, changes, EXTENDABLE, "an extension")
    issues = [
        SpecIssue(
            ("budget", name),
            f"an extension only raises the budget: {name} is "
            f"{_shown(getattr(spec.budget, name))}, not {_shown(getattr(raised, name))}",
        )
        for name in changes
        if not _raises_or_keeps(getattr(spec.budget, name), getattr(raised, name))
    ]
    if issues:
        raise SpecError(issues)
    return admitted(spec.model_copy(update={"budget": raised}), limits)


def changed(spec: SweepSpec, changes: Mapping[str, Any], limits: Limits) -> SweepSpec:
    """``spec`` with its budget set by ``changes`` (some of `CHANGEABLE`, either way), checked
    under ``limits``; `SpecError` names each field that is unknown, invalid or over a cap."""
    budget = _rebudgeted(spec, changes, CHANGEABLE, "a change while the sweep runs")
    return admitted(spec.model_copy(update={"budget": budget}), limits)


def budget_changes(before: Budget, after: Budget) -> dict[str, list[Any]]:
    """``{field: [before, after]}`` for each field of the budget that differs."""
    return {
        name: [getattr(before, name), getattr(after, name)]
        for name in Budget.model_fields
        if getattr(before, name) != getattr(after, name)
    }


def describe_changes(changes: Mapping[str, list[Any]]) -> str:
    """``max_trials 3 → 5, …``, or ``no change``."""
    shown = ", ".join(f"{name} {_shown(a)} → {_shown(b)}" for name, (a, b) in changes.items())
    return shown or "no change"


def raises(before: float | None, after: float | None) -> bool:
    """``after`` is more than ``before`` (None: unlimited)."""
    if after is None:
        return before is not None
    return before is not None and after > before


def _rebudgeted(
    spec: SweepSpec, changes: Mapping[str, Any], allowed: Collection[str], what: str
) -> Budget:
    unknown = [
        SpecIssue(("budget", name), f"{what} sets {', '.join(allowed)}, not {name}")
        for name in changes
        if name not in allowed
    ]
    if not changes:
        unknown.append(SpecIssue(("budget",), f"name at least one of {', '.join(allowed)}"))
    if unknown:
        raise SpecError(unknown)
    try:
        return Budget.model_validate({**spec.budget.model_dump(), **changes})
    except ValidationError as error:
        raise SpecError(
            [SpecIssue(("budget", *e["loc"]), e["msg"]) for e in error.errors()]
        ) from None


def _raises_or_keeps(before: float | None, after: float | None) -> bool:
    return after == before or raises(before, after)


def _shown(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:g}"
