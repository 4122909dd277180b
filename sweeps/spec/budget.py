"""Changing a sweep's budget after it started: what an extension may change (`extended`), and
the record of each change (`BudgetChange`).

An extension continues a sweep (finished or not) as a new attempt with more to spend: it only
raises ``max_trials``, ``time_budget_s`` and ``max_failed_trials`` (null is unlimited, so it
raises any number), and the caps still apply. ``max_concurrent_trials`` is not an extension's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sweeps.spec.checks import admitted, in_force
from sweeps.spec.errors import SpecError, SpecIssue
from sweeps.spec.limits import Limits
from sweeps.spec.model import Budget, SweepSpec

EXTENDABLE: tuple[str, ...] = ("max_trials", "time_budget_s", "max_failed_trials")
__all__ = ["EXTENDABLE", "budget_changes", "extended", "in_force", "raises"]


def extended(spec: SweepSpec, changes: Mapping[str, Any], limits: Limits) -> SweepSpec:
    """``spec`` with its budget raised by ``changes`` (some of `EXTENDABLE`), checked under
    ``limits``; `SpecError` names each field that is unknown, lowered, or over a cap."""
    issues = []
    for name in changes:
        if name not in EXTENDABLE:
            issues.append(
                SpecIssue(
                    ("budget", name),
                    f"an extension changes {', '.join(EXTENDABLE)} only, not {name}",
                )
            )
    if not changes:
        issues.append(SpecIssue(("budget",), f"name at least one of {', '.join(EXTENDABLE)}"))
    if issues:
        raise SpecError(issues)
    try:
        budget = Budget.model_validate({**spec.budget.model_dump(), **changes})
    except Exception as error:  # pydantic's, with the field it names
        raise SpecError([SpecIssue(("budget",), str(error))]) from None
    for name in changes:
        before, after = getattr(spec.budget, name), getattr(budget, name)
        if not _raises_or_keeps(before, after):
            issues.append(
                SpecIssue(
                    ("budget", name),
                    f"an extension only raises the budget: {name} is {_shown(before)}, "
                    f"not {_shown(after)}",
                )
            )
    if issues:
        raise SpecError(issues)
    return admitted(spec.model_copy(update={"budget": budget}), limits)


def budget_changes(before: Budget, after: Budget) -> dict[str, list[Any]]:
    """``{field: [before, after]}`` for each field of the budget that differs."""
    return {
        name: [getattr(before, name), getattr(after, name)]
        for name in Budget.model_fields
        if getattr(before, name) != getattr(after, name)
    }


def raises(before: float | None, after: float | None) -> bool:
    """``after`` is more than ``before`` (None: unlimited)."""
    if after is None:
        return before is not None
    return before is not None and after > before


def _raises_or_keeps(before: float | None, after: float | None) -> bool:
    return after == before or raises(before, after)


def _shown(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:g}"
