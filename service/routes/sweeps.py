"""/v1/sweeps: submit, list, read, follow, cancel, resume and extend sweeps.

Every route answers for the caller's own sweeps (an admin's: every sweep): another user's
sweep is 404 on each, as if it did not exist (`service.access`). Every change is audited.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.access import Caller
from service.auth import CallerDep, client_address, current_caller
from service.deps import CodeStoreDep, LimitsDep, ReconcilerDep, SessionsDep, SettingsDep
from service.openapi import SPEC_BODY, problem_responses
from service.quotas import Quotas
from service.reconciler import Reconciler
from service.routes.code import spec_code_issues
from service.schemas import (
    BestOut,
    BudgetIn,
    Direction,
    EnsembleOut,
    ExtendIn,
    Links,
    SpecOut,
    SweepOut,
    SweepPage,
    SweepStatus,
    TrialOut,
    TrialPage,
    TrialStateName,
)
from service.settings import ServiceSettings
from service.statuses import TERMINAL
from service.store import audit, paging, status_machine, sweep_queries, trial_queries, user_queries
from service.store.models import IDEMPOTENCY_KEY_MAX, Sweep, Trial
from service.store.sweep_store import objectives_of
from sweeps import SpecError, SpecIssue, SweepSpec, parse_spec
from sweeps.mlflow_ui import run_url, runs_url
from sweeps.spec.budget import budget_changes, changed, describe_changes, extended
from sweeps.spec.parse import validate_shape

router = APIRouter(
    prefix="/v1/sweeps",
    tags=["sweeps"],
    dependencies=[Depends(current_caller)],
    responses=problem_responses(401, 413, 422, 503),
)
EVENT_POLL_S = 0.5
TRIAL_PAGE_DEFAULT = 100
HEARTBEAT_S = 15.0
# SweepOut's fields that are not a column of the sweep's row.
SWEEP_EXTRA = frozenset({"counts", "links"})


def sweep_out(
    settings: ServiceSettings, db: Session, sweep: Sweep, counts: dict[str, int] | None = None
) -> SweepOut:
    base = f"/v1/sweeps/{sweep.id}"
    ui = settings.mlflow_ui_url
    experiment = sweep.mlflow_experiment_id
    links = Links(
        self=base,
        trials=f"{base}/trials",
        best=f"{base}/best",
        ensemble=f"{base}/ensemble",
        events=f"{base}/events",
        spec=f"{base}/spec",
        mlflow_experiment=runs_url(ui, experiment) if experiment else None,
        mlflow_parent_run=(
            run_url(ui, experiment, sweep.mlflow_parent_run_id)
            if experiment and sweep.mlflow_parent_run_id
            else None
        ),
    )
    if counts is None:
        counts = trial_queries.counts_by_sweep(db, [sweep.id])[sweep.id]
    # Every other field is the row's column of the same name.
    columns = {name: getattr(sweep, name) for name in SweepOut.model_fields.keys() - SWEEP_EXTRA}
    return SweepOut(**columns, counts=counts, links=links)


@router.post(
    "",
    status_code=202,
    response_model=SweepOut,
    openapi_extra={"requestBody": SPEC_BODY},
    responses=problem_responses(409, 429),
)
async def submit_sweep(
    request: Request,
    response: Response,
    caller: CallerDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    limits: LimitsDep,
    reconciler: ReconcilerDep,
    code_store: CodeStoreDep,
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=IDEMPOTENCY_KEY_MAX, pattern=r"\S")
    ] = None,
) -> SweepOut:
    """Validate the spec, store the sweep and hand it to the reconciler: pending, or queued
    when its owner already holds their active_sweeps quota (it starts, in submission order,
    when an earlier one ends); 429 when their queued_sweeps quota is full too."""
    try:
        document = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SpecError([SpecIssue((), f"the body is not JSON: {error}")]) from None
    except RecursionError:  # e.g. 30,000 nested brackets: small enough, yet a crash
        raise SpecError([SpecIssue((), "the body is nested too deeply to be a spec")]) from None
    spec = parse_spec(document, limits)
    # The code section: allowed here, and its bundle kept here (a read of the store).
    issues = await run_in_threadpool(spec_code_issues, spec, settings, code_store)

    def warm_start_issues() -> list[SpecIssue]:
        with sessions() as db:
            quotas = user_queries.quotas_of(
                user_queries.get_user(db, caller.name), settings.quotas()
            )
            return [
                *sweep_queries.warm_start_issues(db, spec, caller),
                *quota_issues(spec, quotas),
            ]

    issues += await run_in_threadpool(warm_start_issues)
    if issues:
        raise SpecError(issues)

    def store() -> tuple[SweepOut, bool]:
        with sessions() as db:
            quotas = user_queries.quotas_of(
                user_queries.get_user(db, caller.name), settings.quotas()
            )
            sweep, created = sweep_queries.create_sweep(
                db,
                spec.to_document(),
                idempotency_key=idempotency_key,
                limits=limits.to_document(),
                owner=caller.name,
                quotas=quotas,
            )
            if created:
                detail = {"name": sweep.name, "status": sweep.status}
                audit.record(db, caller, "sweep.create", sweep.id, client_address(request), detail)
            return sweep_out(settings, db, sweep), created

    out, created = await run_in_threadpool(store)
    if created:
        reconciler.kick()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/sweeps/{out.id}"
    return out


@router.get("", response_model=SweepPage, responses=problem_responses(400))
def list_sweeps(
    sessions: SessionsDep,
    settings: SettingsDep,
    caller: CallerDep,
    status: SweepStatus | None = None,
    tag: Annotated[str | None, Query(max_length=200)] = None,
    owner: Annotated[
        str | None,
        Query(max_length=64, description="an admin's filter; a member sees their own only"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=paging.MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> SweepPage:
    """The caller's sweeps, newest first (an admin's: everyone's, or ``owner``'s)."""
    if owner is not None and not caller.may_see(owner):
        raise HTTPException(
            403, f"user {caller.name} is a member; only an admin can list another user's sweeps"
        )
    with sessions() as db:
        sweeps, next_cursor = sweep_queries.list_sweeps(
            db,
            status=status and status.value,
            tag=tag,
            owner=caller.owner_filter or owner,
            limit=limit,
            cursor=cursor,
        )
        counts = trial_queries.counts_by_sweep(db, [s.id for s in sweeps])
        items = [sweep_out(settings, db, s, counts[s.id]) for s in sweeps]
    return SweepPage(items=items, next_cursor=next_cursor)


@router.get("/{sweep_id}", response_model=SweepOut, responses=problem_responses(404))
def get_sweep(
    sessions: SessionsDep, settings: SettingsDep, caller: CallerDep, sweep_id: str
) -> SweepOut:
    with sessions() as db:
        return sweep_out(settings, db, sweep_queries.get_sweep(db, sweep_id, caller))


@router.get("/{sweep_id}/trials", response_model=TrialPage, responses=problem_responses(400, 404))
def list_trials(
    sessions: SessionsDep,
    caller: CallerDep,
    sweep_id: str,
    state: Annotated[list[TrialStateName] | None, Query()] = None,
    order_by: Annotated[
        str,
        Query(
            pattern=trial_queries.METRIC_NAME.pattern,
            description="number (the trial's number in the sweep, the order Tune created "
            "them in; trials of sweeps that started before trials were numbered have none and "
            "come last), trial_id, or a reported metric such as val_nll; trials without a "
            "finite value of it come last in either direction, ties go by trial id",
        ),
    ] = trial_queries.TRIAL_ORDER_DEFAULT,
    direction: Direction = Direction.asc,
    limit: Annotated[int, Query(ge=1, le=paging.MAX_PAGE)] = TRIAL_PAGE_DEFAULT,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> TrialPage:
    """A page of the sweep's trials; ``next_cursor`` fetches the next one (the same query
    with ``cursor``). The top 10 by val_nll: ``?order_by=val_nll&limit=10``."""
    with sessions() as db:
        sweep_queries.get_sweep(db, sweep_id, caller)
        trials, next_cursor = trial_queries.trial_page(
            db,
            sweep_id,
            states=None if state is None else [s.value for s in state],
            order_by=order_by,
            descending=direction is Direction.desc,
            limit=limit,
            cursor=cursor,
        )
        return TrialPage(items=[_trial_out(t) for t in trials], next_cursor=next_cursor)


@router.get("/{sweep_id}/best", response_model=BestOut, responses=problem_responses(404))
def best(sessions: SessionsDep, caller: CallerDep, sweep_id: str) -> BestOut:
    with sessions() as db:
        sweep = sweep_queries.get_sweep(db, sweep_id, caller)
    objectives = [o.model_dump(mode="json") for o in objectives_of(sweep.spec)]
    ensemble = _ensemble_or_none(sweep)
    return BestOut(
        objectives=objectives,
        pareto=len(objectives) > 1,
        basis=sweep.best_basis,
        best=sweep.best or [],
        ensemble=ensemble,
    )


@router.get("/{sweep_id}/ensemble", response_model=EnsembleOut, responses=problem_responses(404))
def ensemble(sessions: SessionsDep, caller: CallerDep, sweep_id: str) -> EnsembleOut:
    """The ensemble of the sweep's best trials, built when its driver finished."""
    with sessions() as db:
        sweep = sweep_queries.get_sweep(db, sweep_id, caller)
    found = _ensemble_or_none(sweep)
    if found is None:
        stored = sweep.ensemble or {}
        why = (
            f"building it failed: {stored['error']}"
            if "error" in stored
            else "no finished trial had predictions"
            if stored
            else f"the sweep is {sweep.status}; the ensemble is built when its driver finishes "
            "(and only when its spec's ensemble.size is above 0)"
        )
        raise HTTPException(404, f"sweep {sweep_id} has no ensemble: {why}")
    return found


def _ensemble_or_none(sweep: Sweep) -> EnsembleOut | None:
    stored = sweep.ensemble
    if not stored or "error" in stored or not stored.get("members"):
        return None
    return EnsembleOut.model_validate(stored)


# What the routes that change a sweep's status answer: the sweep, accepted for the reconciler.
STATUS_CHANGE: dict[str, Any] = {
    "status_code": 202,
    "response_model": SweepOut,
    "responses": problem_responses(404, 409),
}


@router.post("/{sweep_id}/cancel", **STATUS_CHANGE)
def cancel(
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    reconciler: ReconcilerDep,
    caller: CallerDep,
    sweep_id: str,
) -> SweepOut:
    """Running trials stop at their next report with their state saved; the job is stopped
    if the driver has not wound down within the grace period. A queued sweep is cancelled
    at once."""
    change = status_machine.request_cancel
    return _changed(
        request, sessions, settings, reconciler, caller, "sweep.cancel", change, sweep_id
    )


@router.post("/{sweep_id}/resume", **STATUS_CHANGE)
def resume(
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    reconciler: ReconcilerDep,
    caller: CallerDep,
    sweep_id: str,
) -> SweepOut:
    """A failed or cancelled sweep continues as a new attempt; finished trials are kept."""
    change = status_machine.resume
    return _changed(
        request, sessions, settings, reconciler, caller, "sweep.resume", change, sweep_id
    )


@router.post("/{sweep_id}/extend", **{**STATUS_CHANGE, "responses": problem_responses(404, 409)})
def extend(
    request: Request,
    caller: CallerDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    reconciler: ReconcilerDep,
    limits: LimitsDep,
    sweep_id: str,
    body: ExtendIn,
) -> SweepOut:
    """A sweep that ended (succeeded, failed or cancelled) goes on as a new attempt with more
    budget: its finished trials are kept, its Optuna study and MLflow parent run go on, and
    its ensemble and registered model are rebuilt at the end (a new registry version only if
    the best trial changed). 409 while it runs; 422 for a budget lowered or over a cap."""
    given = body.model_dump(exclude_unset=True)
    with sessions() as db:
        sweep = sweep_queries.get_sweep(db, sweep_id, caller)
        if sweep.status not in TERMINAL:
            raise status_machine.InvalidTransition(sweep_id, sweep.status, "pending", TERMINAL)
        spec = validate_shape(sweep.spec)
        raised = extended(spec, given, limits)
        changes = budget_changes(spec.budget, raised.budget)
        reason = f"extended: {describe_changes(changes)}"
        extended_sweep = status_machine.extend(db, sweep_id, raised.to_document(), changes, reason)
        detail = {"changes": changes}
        audit.record(db, caller, "sweep.extend", sweep_id, client_address(request), detail)
        out = sweep_out(settings, db, extended_sweep)
    reconciler.kick()
    return out


@router.patch("/{sweep_id}/budget", response_model=SweepOut, responses=problem_responses(404, 409))
def change_budget(
    request: Request,
    caller: CallerDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    limits: LimitsDep,
    sweep_id: str,
    body: BudgetIn,
) -> SweepOut:
    """Change the budget of a sweep that has not ended: ``max_concurrent_trials``,
    ``max_trials``, ``time_budget_s``. Its driver takes the change before it starts another
    trial (it asks the store about once a second); a lower concurrency stops no running trial,
    it only starts fewer. Recorded in ``budget_changes``. 409 once it ended (extend it); 422
    over a cap."""
    given = body.model_dump(exclude_unset=True)
    with sessions() as db:
        sweep = sweep_queries.get_sweep(db, sweep_id, caller)
        if sweep.status not in status_machine.BUDGET_CHANGEABLE:
            raise status_machine.InvalidBudgetChange(sweep_id, sweep.status)
        spec = validate_shape(sweep.spec)
        new = changed(spec, given, limits)
        changes = budget_changes(spec.budget, new.budget)
        changed_sweep = status_machine.change_budget(db, sweep_id, new.to_document(), changes)
        detail = {"changes": changes}
        audit.record(db, caller, "sweep.budget", sweep_id, client_address(request), detail)
        return sweep_out(settings, db, changed_sweep)


def _changed(
    request: Request,
    sessions: sessionmaker[Session],
    settings: ServiceSettings,
    reconciler: Reconciler,
    caller: Caller,
    action: str,
    change: Callable[[Session, str], Sweep],
    sweep_id: str,
) -> SweepOut:
    """The sweep after ``change`` (audited as ``action``), and the reconciler told to act on it
    now."""
    with sessions() as db:
        before = sweep_queries.get_sweep(db, sweep_id, caller).status
        changed_sweep = change(db, sweep_id)
        detail = {"from": before, "to": changed_sweep.status}
        audit.record(db, caller, action, sweep_id, client_address(request), detail)
        out = sweep_out(settings, db, changed_sweep)
    reconciler.kick()
    return out


@router.get(
    "/{sweep_id}/events", response_class=StreamingResponse, responses=problem_responses(404)
)
async def events(
    request: Request, sessions: SessionsDep, settings: SettingsDep, caller: CallerDep, sweep_id: str
) -> StreamingResponse:
    """Server-sent events: `sweep` when the sweep changes, `trial` for each changed trial."""

    def exists() -> None:
        with sessions() as db:
            sweep_queries.get_sweep(db, sweep_id, caller)  # 404 before the stream starts

    await run_in_threadpool(exists)
    return StreamingResponse(
        _event_stream(request, sessions, settings, sweep_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _event_stream(
    request: Request,
    sessions: sessionmaker[Session],
    settings: ServiceSettings,
    sweep_id: str,
) -> AsyncIterator[str]:
    version = 0
    seen: dict[str, Any] = {}
    quiet_since = asyncio.get_running_loop().time()
    while not await request.is_disconnected():
        payloads, final = await asyncio.to_thread(
            event_payloads, sessions, settings, sweep_id, version, seen
        )
        for kind, data, version_now in payloads:
            version = max(version, version_now)
            yield f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"
        now = asyncio.get_running_loop().time()
        if payloads:
            quiet_since = now
        elif now - quiet_since > HEARTBEAT_S:
            quiet_since = now
            yield ": keep-alive\n\n"
        if final:
            return
        await asyncio.sleep(EVENT_POLL_S)


def event_payloads(
    sessions: sessionmaker[Session],
    settings: ServiceSettings,
    sweep_id: str,
    version: int,
    seen: dict[str, Any],
) -> tuple[list[tuple[str, dict[str, Any], int]], bool]:
    with sessions() as db:
        changed = sweep_queries.changes_since(db, sweep_id, version)
        if changed is None:
            return [], False
        sweep, trials = changed
        payloads: list[tuple[str, dict[str, Any], int]] = []
        for trial in trials:
            stamp = (trial.state, trial.epoch, trial.updated_at)
            if seen.get(trial.trial_id) != stamp:
                seen[trial.trial_id] = stamp
                payloads.append(("trial", _trial_out(trial).model_dump(mode="json"), 0))
        out = sweep_out(settings, db, sweep).model_dump(mode="json")
        payloads.append(("sweep", out, sweep.version))
        return payloads, sweep.status in TERMINAL


def _trial_out(trial: Trial) -> TrialOut:
    return TrialOut.model_validate(trial, from_attributes=True)


@router.get("/{sweep_id}/spec", response_model=SpecOut, responses=problem_responses(404))
def spec(sessions: SessionsDep, caller: CallerDep, sweep_id: str) -> SpecOut:
    """The spec the sweep runs under, as admitted: every default filled in (a time budget the
    spec did not give is the cap's), with the caps and data root it was admitted under."""
    with sessions() as db:
        sweep = sweep_queries.get_sweep(db, sweep_id, caller)
    return SpecOut.model_validate(
        {"sweep_id": sweep.id, "spec": sweep.spec, "limits": sweep.limits}
    )


def quota_issues(spec: SweepSpec, quotas: Quotas) -> list[SpecIssue]:
    """What in a spec its owner's quotas can never let run: a trial needing more GPUs than the
    gpus quota, or a concurrent_trials quota of 0."""
    issues = []
    if quotas.gpus is not None and spec.resources.gpu > quotas.gpus:
        issues.append(
            SpecIssue(
                ("resources", "gpu"),
                f"a trial takes {spec.resources.gpu:g} GPU(s); your gpus quota is "
                f"{quotas.gpus:g}, so none could ever run",
            )
        )
    if quotas.concurrent_trials == 0:
        issues.append(
            SpecIssue(("budget", "max_concurrent_trials"), "your concurrent_trials quota is 0")
        )
    return issues
