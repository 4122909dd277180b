"""The API's response models: the contract the client and the OpenAPI document share."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from service.access import MEMBER, ROLES, USER_NAME, USER_NAME_RULE
from service.statuses import BEST_BASES, SWEEP_STATUSES
from sweeps.records import TRIAL_STATES

# The list filters' values, spelled out in the OpenAPI document (an unknown one is a 422). The
# members come from their one home, which mypy cannot read through StrEnum's call.
SweepStatus = StrEnum("SweepStatus", {s: s for s in SWEEP_STATUSES})  # type: ignore[misc]
TrialStateName = StrEnum("TrialStateName", {s: s for s in TRIAL_STATES})  # type: ignore[misc]
UserRole = StrEnum("UserRole", {r: r for r in ROLES})  # type: ignore[misc]
BASIS = (
    "what best is: "
    + "; ".join(f"'{basis}'" for basis in BEST_BASES)
    + " (service.statuses says when each applies); null for a sweep whose best was stored "
    "before the basis was kept and that has not run since"
)


class Direction(StrEnum):
    asc = "asc"
    desc = "desc"


class Links(BaseModel):
    self: str
    trials: str
    best: str
    ensemble: str
    events: str
    spec: str
    mlflow_experiment: str | None = None
    mlflow_parent_run: str | None = None


class ExtendIn(BaseModel):
    """More budget for a sweep that ended: each field given only raises its value (null is
    unlimited), and the service's caps apply. Its finished trials are kept, and its study and
    MLflow parent run go on."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_trials: int | None = Field(None, description="trials in all, the earlier ones included")
    time_budget_s: float | None = Field(None, description="seconds the next attempt may run")
    max_failed_trials: int | None = None


class BudgetIn(BaseModel):
    """A running sweep's new budget: each field given replaces its value (null is unlimited
    where the spec allows it), within the service's caps. The driver takes it before it starts
    its next trial; a lower concurrency stops no running trial."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_concurrent_trials: int | None = None
    max_trials: int | None = Field(None, description="trials in all, the earlier ones included")
    time_budget_s: float | None = Field(None, description="seconds from this attempt's start")


class WarmStartOut(BaseModel):
    """What a sweep's ``search.warm_start`` seeded its study with (`sweeps.warm_start`); null
    until its driver has started."""

    sweeps: list[str]
    trials_seeded: int
    trials_skipped: dict[str, int]  # by reason: "epochs differs", "lr outside the space", …


class SweepOut(BaseModel):
    id: str
    name: str
    status: str
    reason: str | None
    attempt: int
    tags: list[str]
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    submission_id: str | None
    mlflow_experiment_id: str | None
    mlflow_parent_run_id: str | None
    counts: dict[str, int]
    best: list[dict[str, Any]] | None
    best_basis: str | None = Field(None, description=BASIS)
    # The best trial's model in the MLflow Model Registry: name, version and a models:/ URI
    # to load or serve it (or name and error when registering failed); null until registered.
    registered_model: dict[str, str] | None = None
    warm_start: WarmStartOut | None = None
    # Each change of its budget since it was submitted, oldest first: at, kind (extend or
    # change), changes ({field: [before, after]}).
    budget_changes: list[dict[str, Any]] = Field(default_factory=list)
    owner: str = Field(description="the user who submitted it; only they and admins see it")
    allowance: int | None = Field(
        None,
        description="trials it may run at once now, under its owner's quotas and its fair "
        "share of the cluster (service.fair_share); null until it runs, 0 once it ended",
    )
    allowance_reason: str | None = Field(
        None, description="why the allowance is below its max_concurrent_trials"
    )
    links: Links


class SweepPage(BaseModel):
    items: list[SweepOut]
    next_cursor: str | None


class TrialOut(BaseModel):
    trial_id: str
    name: str | None
    # Its number in the sweep (the t7 in its name, #7 in its MLflow run's); null for a trial of
    # a sweep that started before trials were numbered.
    number: int | None = None
    state: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    epoch: int | None
    mlflow_run_id: str | None
    error: str | None
    # Where it runs: node_id, node_ip, gpu_ids (those Ray assigned), device (what it trains
    # on); null until its first report.
    placement: dict[str, Any] | None = None
    updated_at: datetime


class TrialPage(BaseModel):
    items: list[TrialOut]
    next_cursor: str | None


class EnsembleOut(BaseModel):
    """The sweep ensemble: an equal-weight ensemble of the sweep's best finished trials."""

    selection: str
    size: int  # the members it has (in ensembles stored before `requested`: the spec's size)
    members: list[dict[str, Any]]  # trial_id, name, mlflow_run_id, weight
    # {val,test}_{accuracy,nll,ece,aece,brier}, *_ts, val_temperature, val_temperature_fitted
    metrics: dict[str, Any]
    candidates: int
    skipped: list[dict[str, Any]]
    # Absent (null) in ensembles stored before they existed:
    requested: int | None = None  # the spec's ensemble.size
    note: str | None = None  # why it has fewer members than requested
    temperature_scaling: str | None = None  # why its temperature was not fitted (T = 1)


class BestOut(BaseModel):
    """A sweep's best: for several objectives (``pareto``) the Pareto set of its finished
    trials, empty until one finishes; for one, the best so far by latest report while it runs
    and the best finished trial once its driver has ended (``basis`` says which)."""

    objectives: list[dict[str, Any]]
    pareto: bool  # several objectives: best is a Pareto set
    basis: str | None = Field(description=BASIS)
    best: list[dict[str, Any]]
    ensemble: EnsembleOut | None = None


class LimitsOut(BaseModel):
    """The caps and data root a sweep was admitted under (`sweeps.Limits`): its driver enforces
    these, not its own environment's."""

    max_trials: int
    max_concurrent_trials: int
    max_time_budget_s: float
    max_epochs: int
    max_trial_cpus: float
    max_trial_gpus: float
    data_root: str | None


class SpecOut(BaseModel):
    """The spec a sweep runs under, as admitted: every default filled in (a time budget the spec
    did not give is the cap's), with the caps it was admitted under."""

    sweep_id: str
    # The stored document, in the shape POST /v1/sweeps takes.
    spec: Annotated[
        dict[str, Any], WithJsonSchema({"allOf": [{"$ref": "#/components/schemas/SweepSpec"}]})
    ]
    # null for a sweep stored before the caps were kept: its driver uses its own environment's.
    limits: LimitsOut | None


class Problem(BaseModel):
    """RFC 9457 problem details: every error the API returns has this shape."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[dict[str, Any]] | None = None


class CodeOut(BaseModel):
    """A code bundle the service keeps (POST /v1/code's answer): a spec names it by
    ``code.digest``."""

    digest: str = Field(description="sha256:<hex> of the bundle's bytes")
    size: int = Field(description="the bundle's size in bytes")
    files: int = Field(description="the files it holds")


class QuotasOut(BaseModel):
    active_sweeps: int
    queued_sweeps: int
    concurrent_trials: int | None
    gpus: float | None


class QuotasIn(BaseModel):
    """Quotas set for one user; a null removes that quota's own value (the default applies)."""

    model_config = ConfigDict(extra="forbid")

    active_sweeps: int | None = Field(None, ge=1)
    queued_sweeps: int | None = Field(None, ge=1)
    concurrent_trials: int | None = Field(None, ge=0)
    gpus: float | None = Field(None, ge=0)


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=USER_NAME.pattern, description=USER_NAME_RULE)
    role: UserRole = Field(MEMBER, description="admin or member")  # type: ignore[assignment]
    quotas: QuotasIn | None = None


class UserOut(BaseModel):
    name: str
    role: str
    created_at: datetime
    quotas: QuotasOut = Field(description="the quotas in force: the user's own, else defaults")
    own_quotas: dict[str, Any] = Field(description="the quotas set for this user alone")


class MeOut(UserOut):
    token_id: str | None


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_at: datetime | None = Field(None, description="when it stops working (UTC if naive)")


class TokenOut(BaseModel):
    id: str
    user: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class IssuedTokenOut(TokenOut):
    token: str = Field(description="the token itself: shown this once, never again")


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    client: str | None
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_cursor: str | None
