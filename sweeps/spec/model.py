"""SweepSpec: the document a user writes to describe one sweep (YAML or JSON).

The pydantic models here check shapes and types; `sweeps.spec.checks` adds the rules that need
gradreg (known datasets, which method uses which setting, bounds, caps). `sweeps.parse_spec`
runs both and raises one `SpecError` that lists every problem with its field path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gradreg.data.splits import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION
from gradreg.methods import METHOD_NAMES
from gradreg.names import DEFAULT_OBJECTIVE, default_goal
from sweeps.code import DIGEST_PATTERN
from sweeps.records import SWEEP_NAME_PATTERN

if TYPE_CHECKING:
    MethodName = str  # a Literal of names known only at run time: a str to the type checker
else:
    MethodName = Literal[METHOD_NAMES]  # the method table's names, in its order

# Values a setting may take: JSON scalars. bool comes first so true/false stay booleans.
Scalar = bool | int | float | str
SweepName = Annotated[
    str, StringConstraints(pattern=SWEEP_NAME_PATTERN, min_length=1, max_length=64)
]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]
DEFAULT_MODEL = "mlp"  # a spec that names no model trains this one


class _Section(BaseModel):
    # strict: "0.1" is not a number and 1 is not true; forbid: a misspelt key is an error.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    def __setstate__(self, state: dict[Any, Any]) -> None:
        # A section pickled before a field existed (Tune's saved state of an earlier sweep)
        # lacks it: it takes the field's default.
        values = state.get("__dict__", {})
        for name, field in type(self).model_fields.items():
            if name not in values and not field.is_required():
                values[name] = field.get_default(call_default_factory=True)
        super().__setstate__(state)


class DatasetSection(_Section):
    name: str | None = Field(
        None,
        description="a gradreg dataset, e.g. digits, mnist1d, cifar10, or file: your own file "
        "(see options); or leave it out and give entry_point",
    )
    entry_point: str | None = Field(
        None,
        description="your own loader, package.module:function (instead of name): called with "
        "options as keyword arguments where the trials run, in the sweep's code (code)",
    )
    split_seed: int = Field(0, ge=0)
    val_fraction: float = Field(DEFAULT_VAL_FRACTION, gt=0, lt=1)
    test_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="held-out test share; null keeps the dataset's default "
        f"({DEFAULT_TEST_FRACTION}, or the dataset's own test split: mnist, fashion_mnist, "
        "cifar10, a .npz with x_test and y_test, a loader's test split, which then must stay "
        "null)",
    )
    data_dir: str | None = Field(
        None,
        description="directory of the file datasets (mnist, fashion_mnist, cifar10) and of a "
        "file dataset's path, relative to the data root (GRADREG_DATA_DIR)",
    )
    options: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="dataset options such as data_seed (a built-in dataset's are numbers, "
        "strings or booleans; a loader's any JSON values). For name: file, path (relative to the "
        "data root; a .npz with arrays x and y, and optionally x_test and y_test as the test "
        "split; a .csv or .parquet table of numeric feature columns and a label column; or an "
        "image folder root/<class name>/<image>.png|.jpg), format (npz, csv, parquet or "
        "image_folder; default: from the suffix, a folder is image_folder) and label (a table's "
        "label column, default label: integers 0..C-1, or any values, mapped to classes in "
        "sorted order)",
    )

    @model_validator(mode="before")
    @classmethod
    def _name_or_entry_point(cls, data: Any) -> Any:
        return _one_of(data, "dataset", default=None)

    @property
    def identifier(self) -> str:
        """What TrainConfig's ``dataset`` takes: the built-in name or the entry point."""
        return self.entry_point or self.name or ""


class ModelSection(_Section):
    name: str | None = Field(
        None,
        description="a gradreg architecture (default mlp); or leave it out and give entry_point",
    )
    entry_point: str | None = Field(
        None,
        description="your own builder, package.module:function (instead of name): called as "
        "build(input_shape, n_classes, **options) where the trials run, in the sweep's code "
        "(code); it returns a torch.nn.Module mapping a batch to logits (B, n_classes)",
    )
    options: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="builder options, e.g. hidden: [128, 128] (a built-in model's are numbers, "
        "strings, booleans or lists of integers; a builder's any JSON values)",
    )

    @model_validator(mode="before")
    @classmethod
    def _name_or_entry_point(cls, data: Any) -> Any:
        return _one_of(data, "model", default=DEFAULT_MODEL)

    @property
    def identifier(self) -> str:
        """What TrainConfig's ``model`` takes: the built-in name or the entry point."""
        return self.entry_point or self.name or DEFAULT_MODEL


def _one_of(data: Any, section: str, default: str | None) -> Any:
    """A section names its code by ``name`` (built in) or ``entry_point`` (the user's), never
    both; with neither, the ``default`` name, or a problem when there is none."""
    if not isinstance(data, dict):
        return data
    name, entry_point = data.get("name"), data.get("entry_point")
    if name is not None and entry_point is not None:
        raise PydanticCustomError(
            "name_and_entry_point",
            f"{section}.name and {section}.entry_point exclude each other: give name (a "
            f"built-in {section}) or entry_point (your own, package.module:function), not both",
        )
    if name is None and entry_point is None:
        if default is None:
            raise PydanticCustomError(
                "name_or_entry_point",
                f"give {section}.name (a built-in {section}) or {section}.entry_point (your "
                "own, package.module:function)",
            )
        return {**data, "name": default}
    return data


class CodeSection(_Section):
    digest: str | None = Field(
        None,
        pattern=DIGEST_PATTERN,
        description="the code bundle the trials run with, sha256:<hex> of its zip; the service "
        "client sets it after uploading --code DIR (python -m sweeps run --code DIR needs none)",
    )
    requirements: list[Annotated[str, StringConstraints(min_length=1, max_length=1000)]] = Field(
        default_factory=list,
        max_length=64,
        description="pip requirements the trials install (Ray's pip runtime environment): PEP "
        "508 strings such as einops==0.8.2, or absolute paths of .whl files present on every "
        "node; no pip options (the operator chooses the package index)",
    )


class FloatParameter(_Section):
    type: Literal["float"]
    low: float
    high: float
    scale: Literal["linear", "log"] = "linear"
    step: float | None = Field(None, gt=0, description="discretise a linear range")


class IntParameter(_Section):
    type: Literal["int"]
    low: int
    high: int
    scale: Literal["linear", "log"] = "linear"
    step: int = Field(1, ge=1)


class CategoricalParameter(_Section):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)


Parameter = Annotated[
    FloatParameter | IntParameter | CategoricalParameter, Field(discriminator="type")
]


class Objective(_Section):
    metric: str = Field(description="a validation or training metric, e.g. val_nll")
    goal: Literal["minimize", "maximize"] | None = Field(
        None, description="default: maximize accuracy, minimize everything else"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_goal(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("goal") is None:
            metric = data.get("metric")
            if isinstance(metric, str):
                data = {**data, "goal": default_goal(metric)}
        return data

    @property
    def mode(self) -> Literal["min", "max"]:
        """Ray Tune's spelling of the goal."""
        return "min" if self.goal == "minimize" else "max"


MAX_WARM_START_SWEEPS = 16


class WarmStart(_Section):
    sweeps: list[SweepName] = Field(
        min_length=1,
        max_length=MAX_WARM_START_SWEEPS,
        description="earlier sweeps whose finished trials seed this sweep's study before its "
        "first suggestion: those trained on the same dataset, model and code, at the same "
        "fixed settings, and lying in this space (others are skipped and counted)",
    )

    @field_validator("sweeps")
    @classmethod
    def _distinct(cls, sweeps: list[str]) -> list[str]:
        repeated = sorted({name for name in sweeps if sweeps.count(name) > 1})
        if repeated:
            raise PydanticCustomError(
                "warm_start", "names {repeated} more than once", {"repeated": repeated}
            )
        return sweeps


class SearchSection(_Section):
    algorithm: Literal["tpe", "gp", "cmaes", "random", "nsga2"] = "tpe"
    seed: int | None = Field(None, ge=0)
    n_startup_trials: int = Field(
        10, ge=0, description="random trials before the model-based samplers take over"
    )
    population_size: int | None = Field(None, ge=2, description="nsga2 only (default 50)")
    initial_points: list[dict[str, Scalar]] = Field(
        default_factory=list, description="parameter values to try first, in order"
    )
    warm_start: WarmStart | None = Field(
        None, description="seed the study with earlier sweeps' finished trials"
    )


class EarlyStopping(_Section):
    kind: Literal["none", "asha"] = "none"
    metric: str | None = Field(None, description="default: the first objective's metric")
    goal: Literal["minimize", "maximize"] | None = None
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before a cut")
    reduction_factor: float = Field(3.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="default: the epochs setting")


class Budget(_Section):
    max_trials: int = Field(20, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)
    max_failed_trials: int | None = Field(
        None, ge=0, description="end the sweep once more trials than this have failed"
    )
    time_budget_s: float | None = Field(None, gt=0)


class Resources(_Section):
    cpu: float = Field(1.0, gt=0, description="CPUs per trial (also its torch threads)")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; a fraction shares one GPU")


class FaultTolerance(_Section):
    max_retries_per_trial: int = Field(1, ge=0)
    checkpoint_every_epochs: int = Field(1, ge=1)


class EnsembleSection(_Section):
    size: int = Field(
        5,
        ge=0,
        le=50,
        description="members of the sweep ensemble (0: none); needs trials that finished",
    )
    selection: Literal["top", "greedy"] = Field(
        "top",
        description="top: the best `size` finished trials by the first objective; greedy: "
        "Caruana's selection by validation NLL, with replacement, among the best 4 × size",
    )


class Tracking(_Section):
    experiment: str | None = Field(None, description="MLflow experiment; default: the name")
    log_reliability_diagram: bool = True
    log_checkpoints: bool = Field(False, description="log the final posterior's state_dict")
    progress_interval_s: float = Field(
        1.0,
        ge=0,
        allow_inf_nan=False,
        description="between its checkpoints, a trial reports its progress to Tune (and so to "
        "the events, the store and the service) at most once in this many seconds; MLflow gets "
        "every epoch. 0: every epoch. A sweep with early stopping reports every epoch",
    )
    log_model: bool = Field(
        True,
        description="log every finished trial's posterior as an MLflow pyfunc model: class "
        "probabilities from inputs in the dataset's own units",
    )
    register_best: bool | None = Field(
        None,
        description="register the best trial's model (by the first objective) in the MLflow "
        "Model Registry when the sweep ends; null: whenever log_model is on",
    )
    registered_model: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        # MLflow refuses '/' and ':' in a model's name, and the name goes into models:/ URIs.
        pattern=r"^[^/:\s](?:[^/:]*[^/:\s])?$",
        description="the registered model's name (no '/' or ':'); default: the spec's name",
    )

    @property
    def registers_best(self) -> bool:
        return self.log_model if self.register_best is None else self.register_best


class SweepSpec(_Section):
    """One sweep: what to train, what to search, how to judge and how much to spend."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        allow_inf_nan=False,
        json_schema_extra={"title": "gradreg sweep specification"},
    )

    name: SweepName
    description: str = Field("", max_length=2000)
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    dataset: DatasetSection
    model: ModelSection = Field(default_factory=ModelSection)
    code: CodeSection = Field(
        default_factory=CodeSection,
        description="the user's code the trials run with (entry points) and its requirements",
    )
    method: MethodName | None = Field(
        None, description="fixed method; leave out to search `method` as a categorical"
    )
    fixed: dict[str, Scalar] = Field(
        default_factory=dict,
        description="hyperparameters held constant (epochs, lr, …). `predict` (the predictive "
        "behind the val_/test_ metrics) defaults to each method's own posterior predictive: "
        "sample for VL and MC-VI, glm_probit for Laplace, mean for MAP, so that a method "
        "comparison compares methods rather than networks at their means; the network at the "
        "mean is always reported too, as *_at_mean, and temperature-scaled metrics as *_ts",
    )
    parameters: dict[str, Parameter] = Field(
        default_factory=dict, description="the search space, bounds in natural units"
    )
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric=DEFAULT_OBJECTIVE)], min_length=1
    )
    search: SearchSection = Field(default_factory=SearchSection)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    budget: Budget = Field(default_factory=Budget)
    resources: Resources = Field(default_factory=Resources)
    fault_tolerance: FaultTolerance = Field(default_factory=FaultTolerance)
    tracking: Tracking = Field(default_factory=Tracking)
    ensemble: EnsembleSection = Field(
        default_factory=EnsembleSection,
        description="an equal-weight ensemble of the sweep's best trials, built at its end",
    )

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods this sweep may train: the fixed one or the searched choices."""
        if self.method is not None:
            return (self.method,)
        searched = self.parameters.get("method")
        if isinstance(searched, CategoricalParameter):
            return tuple(str(choice) for choice in searched.choices)
        return ()

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def to_document(self) -> dict[str, Any]:
        """A plain JSON-safe mapping that `parse_spec` turns back into this spec."""
        return self.model_dump(mode="json", exclude_defaults=False)
