"""One concept, the rules a sweep spec must keep beyond its shape: run once, at the door.

`require_valid(spec, limits)` raises one `SpecError` that lists every problem with its field
path (`parameters.noise_scale.low`) and a message that says what is accepted. The API calls it
when a sweep is submitted and the driver when it starts or resumes one from a file; nothing
downstream checks a spec again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Container, Iterable, Iterator, Mapping
from typing import Any

from gradreg.config import TrainConfig
from gradreg.data import (
    FILE_DATASET,
    FileDatasetError,
    available_datasets,
    check_file_dataset,
    dataset_options,
)
from gradreg.methods import HYPERPARAMETERS, METHODS
from gradreg.models import available_models, model_option_problems, model_options
from gradreg.names import EPOCH_METRICS, TEMPERATURE_METRICS
from gradreg.user_code import entry_point_problem
from sweeps.spec import (
    Budget,
    CategoricalParameter,
    FloatParameter,
    IntParameter,
    SweepSpec,
)
from sweeps.spec.errors import SpecError, SpecIssue
from sweeps.spec.limits import Limits
from sweeps.spec.resolve import base_settings, max_epochs, resolve_data_dir, resolve_data_file

# Objectives steer the search, so they come from data the search may look at.
OBJECTIVE_METRICS = tuple(
    m for m in EPOCH_METRICS if m.startswith(("val_", "train_")) and m not in TEMPERATURE_METRICS
)
# Searched integers need type: int; TrainConfig's annotations say which settings are integers.
INTEGER_SETTINGS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if str(f.type).split(" |")[0] == "int"
)
SECTION_OWNED = {
    "dataset": "dataset.name",
    "model": "model.name",
    "model_options": "model.options",
    "dataset_options": "dataset.options",
    "split_seed": "dataset.split_seed",
    "val_fraction": "dataset.val_fraction",
    "test_fraction": "dataset.test_fraction",
    "variance": "the method ("
    + " or ".join(name for name, m in METHODS.items() if m.variance)
    + ")",
}


def require_valid(spec: SweepSpec, limits: Limits) -> None:
    """Raise `SpecError` naming every rule ``spec`` breaks under ``limits``."""
    issues = list(semantic_issues(spec, limits))
    if issues:
        raise SpecError(issues)


def admitted(spec: SweepSpec, limits: Limits) -> SweepSpec:
    """``spec`` checked under ``limits``, with the budget in force written in: a spec that
    names no time budget gets the cap's, so the stored sweep shows what it runs under."""
    require_valid(spec, limits)
    budget = in_force(spec.budget, limits)
    return spec if budget is spec.budget else spec.model_copy(update={"budget": budget})


def in_force(budget: Budget, limits: Limits) -> Budget:
    """``budget`` as a sweep runs under it: one that names no time budget has the cap's."""
    if budget.time_budget_s is not None:
        return budget
    return budget.model_copy(update={"time_budget_s": limits.max_time_budget_s})


# ---------------------------------------------------------------- meaning


def semantic_issues(spec: SweepSpec, limits: Limits) -> Iterator[SpecIssue]:
    dataset_issues = list(_dataset_issues(spec, limits))
    model_issues = list(_model_issues(spec))
    yield from dataset_issues
    yield from model_issues
    methods_ok = True
    for issue in _method_issues(spec):
        methods_ok = False
        yield issue
    yield from _range_issues(spec)
    if methods_ok:
        # The settings are probed with the dataset and model sections only where those passed
        # their own checks: a section's problem is reported once, at the section.
        probe = _probe_base(spec, limits, dataset_ok=not dataset_issues, model_ok=not model_issues)
        yield from _setting_issues(spec, probe)
        yield from _initial_point_issues(spec)
    yield from _objective_issues(spec)
    yield from _early_stopping_issues(spec)
    yield from _budget_issues(spec, limits)
    yield from _resource_issues(spec, limits)
    yield from _tracking_issues(spec)
    yield from _code_issues(spec)


def _dataset_issues(spec: SweepSpec, limits: Limits) -> Iterator[SpecIssue]:
    issues = list(_dataset_section_issues(spec, limits))
    yield from issues
    if not issues and spec.dataset.name == FILE_DATASET:
        yield from _file_issues(spec, limits)


def _unknown_name(section: str, name: str, available: Collection[str]) -> SpecIssue | None:
    """A dataset or model that is not there, with the names that are."""
    if name in available:
        return None
    return SpecIssue(
        (section, "name"), f"unknown {section} {name!r}; accepted: {', '.join(available)}"
    )


def _option_issues(
    section: str,
    name: str,
    options: Iterable[str],
    accepted: Container[str],
    listed: str,
    said: Mapping[str, str] | None = None,
) -> Iterator[SpecIssue]:
    """A dataset's or model's ``options`` that it does not take (``listed`` says which it does),
    in their order; ``said``: options with a message of their own."""
    said = said or {}
    for option in options:
        if option in said:
            yield SpecIssue((section, "options", option), said[option])
        elif option not in accepted:
            yield SpecIssue(
                (section, "options", option),
                f"unknown option for {section} {name!r}; accepted: {listed}",
            )


def _entry_point_issues(section: str, entry_point: str) -> Iterator[SpecIssue]:
    """An entry point's syntax (nothing is imported here: the preflight runs the code, where
    the trials run). Its options are the user's to check."""
    problem = entry_point_problem(entry_point)
    if problem is not None:
        yield SpecIssue((section, "entry_point"), problem)


def _option_type_issues(
    section: str, name: str, options: Mapping[str, Any], allowed: str
) -> Iterator[SpecIssue]:
    """A built-in's options are scalars (and a model's lists of integers too); a user's code
    takes any JSON values."""
    for option, value in options.items():
        integers = isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
        if isinstance(value, bool | int | float | str) or (section == "model" and integers):
            continue
        yield SpecIssue(
            (section, "options", option),
            f"{section} {name!r} takes {allowed}, got {value!r}",
        )


def _dataset_section_issues(spec: SweepSpec, limits: Limits) -> Iterator[SpecIssue]:
    dataset = spec.dataset
    if dataset.entry_point is not None:
        yield from _entry_point_issues("dataset", dataset.entry_point)
        if dataset.data_dir is not None:
            yield SpecIssue(
                ("dataset", "data_dir"),
                "a loader reads its own data; data_dir is for the file datasets (name)",
            )
        yield from _fraction_issues(spec)
        return
    assert dataset.name is not None  # the section's shape: name or entry_point
    if (unknown := _unknown_name("dataset", dataset.name, available_datasets())) is not None:
        yield unknown
        return
    accepted = dataset_options(dataset.name)
    listed = ", ".join(o for o in accepted if o != "data_dir") or "none"
    moved = {"data_dir": "give it as dataset.data_dir"}
    yield from _option_issues("dataset", dataset.name, dataset.options, accepted, listed, moved)
    yield from _option_type_issues(
        "dataset", dataset.name, dataset.options, "numbers, strings or booleans as options"
    )
    if dataset.data_dir is not None:
        if "data_dir" not in accepted:
            yield SpecIssue(
                ("dataset", "data_dir"),
                f"dataset {dataset.name!r} reads no files; data_dir is for the file datasets",
            )
        elif (
            limits.data_root is not None
            and resolve_data_dir(dataset.data_dir, limits.data_root) is None
        ):
            yield SpecIssue(
                ("dataset", "data_dir"),
                f"must lie inside the data root {limits.data_root} (GRADREG_DATA_DIR); "
                "give a path relative to it",
            )
    yield from _fraction_issues(spec)


def _fraction_issues(spec: SweepSpec) -> Iterator[SpecIssue]:
    dataset = spec.dataset
    if dataset.test_fraction is not None and dataset.val_fraction + dataset.test_fraction >= 1:
        yield SpecIssue(("dataset", "test_fraction"), "val_fraction + test_fraction must be < 1")


# Where a file dataset's problem is reported, by the field its error names.
_FILE_FIELDS = {
    "path": ("dataset", "options", "path"),
    "format": ("dataset", "options", "format"),
    "label": ("dataset", "options", "label"),
    "val_fraction": ("dataset", "val_fraction"),
    "test_fraction": ("dataset", "test_fraction"),
}


def _file_issues(spec: SweepSpec, limits: Limits) -> Iterator[SpecIssue]:
    """Open the user's file and check it as a trial would (same words), without training:
    the file is read once, and not kept."""
    dataset = spec.dataset
    options = dict(dataset.options)
    try:
        if isinstance(options.get("path"), str):
            options["path"] = str(resolve_data_file(dataset, limits.data_root))
        check_file_dataset(
            val_fraction=dataset.val_fraction, test_fraction=dataset.test_fraction, **options
        )
    except FileDatasetError as error:
        yield SpecIssue(_FILE_FIELDS[error.field], str(error))
    except (ValueError, TypeError) as error:
        yield SpecIssue(("dataset", "options", "path"), str(error))


def _model_issues(spec: SweepSpec) -> Iterator[SpecIssue]:
    model = spec.model
    if model.entry_point is not None:
        yield from _entry_point_issues("model", model.entry_point)
        return
    assert model.name is not None  # the section's shape: name or entry_point
    bad_types = list(
        _option_type_issues(
            "model",
            model.name,
            model.options,
            "numbers, strings, booleans or lists of integers as options",
        )
    )
    yield from bad_types
    if bad_types:
        return
    if (unknown := _unknown_name("model", model.name, available_models())) is not None:
        yield unknown
        return
    accepted = model_options(model.name)
    listed = ", ".join(f"{k}={v!r}" for k, v in accepted.items())
    yield from _option_issues("model", model.name, model.options, accepted, listed)
    for option, problem in model_option_problems(model.name, dict(model.options)).items():
        yield SpecIssue(("model", "options", option), problem)


def _method_issues(spec: SweepSpec) -> Iterator[SpecIssue]:
    accepted = ", ".join(METHODS)
    searched = spec.parameters.get("method")
    if spec.method is None and searched is None:
        yield SpecIssue(
            ("method",),
            f"give a method ({accepted}) or search one as parameters.method (categorical)",
        )
    elif spec.method is not None and searched is not None:
        yield SpecIssue(
            ("parameters", "method"), "method is fixed to " + repr(spec.method) + "; drop one"
        )
    elif searched is not None:
        if not isinstance(searched, CategoricalParameter):
            yield SpecIssue(("parameters", "method", "type"), "method is searched as categorical")
            return
        for i, choice in enumerate(searched.choices):
            if choice not in METHODS:
                yield SpecIssue(
                    ("parameters", "method", "choices", i),
                    f"unknown method {choice!r}; accepted: {accepted}",
                )


def _range_issues(spec: SweepSpec) -> Iterator[SpecIssue]:
    for name, parameter in spec.parameters.items():
        at = ("parameters", name)
        if isinstance(parameter, FloatParameter | IntParameter):
            if parameter.low >= parameter.high:
                yield SpecIssue(
                    (*at, "high"), f"high ({parameter.high}) must be > low ({parameter.low})"
                )
            if parameter.scale == "log" and parameter.low <= 0:
                yield SpecIssue(
                    (*at, "low"), f"log scale needs low > 0, got {parameter.low} (natural units)"
                )
            if parameter.scale == "log" and _has_step(parameter):
                yield SpecIssue((*at, "step"), "a step needs scale: linear")
        else:
            if len(set(map(repr, parameter.choices))) != len(parameter.choices):
                yield SpecIssue((*at, "choices"), "choices must be distinct")


def _has_step(parameter: FloatParameter | IntParameter) -> bool:
    if isinstance(parameter, FloatParameter):
        return parameter.step is not None
    return parameter.step > 1


def _values_to_try(parameter: Any) -> list[Any]:
    if isinstance(parameter, CategoricalParameter):
        return list(parameter.choices)
    return [parameter.low, parameter.high]


def _probe_base(
    spec: SweepSpec, limits: Limits, *, dataset_ok: bool, model_ok: bool
) -> dict[str, Any]:
    """The TrainConfig settings from the spec's dataset and model sections that the settings
    are probed with. A section with problems of its own is left to TrainConfig's defaults, so
    that its problem (a data_dir outside the data root, an unknown dataset or model) is
    reported once, at the section, and not again at every setting."""
    model = {"model": spec.model.identifier, "model_options": dict(spec.model.options)}
    if not dataset_ok:
        # base_settings resolves data_dir, and refuses one outside the data root
        return model if model_ok else {}
    base = base_settings(spec, limits.data_root)
    return base if model_ok else {k: v for k, v in base.items() if k not in model}


def _setting_issues(spec: SweepSpec, probe_base: Mapping[str, Any]) -> Iterator[SpecIssue]:
    """Every fixed or searched setting must be one some method uses, and valid for it: alone,
    and together with the fixed settings (fisher exact with finite differences, say).
    ``probe_base`` is what the dataset and model sections give TrainConfig (`_probe_base`)."""
    methods = spec.methods
    named = [("fixed", name) for name in spec.fixed] + [
        ("parameters", name) for name in spec.parameters if name != "method"
    ]
    valid_fixed: dict[str, Any] = {}  # fixed settings that passed alone (named lists them first)
    for section, name in named:
        if name in SECTION_OWNED:
            yield SpecIssue((section, name), f"set this as {SECTION_OWNED[name]}")
            continue
        if name not in HYPERPARAMETERS:
            yield SpecIssue(
                (section, name), f"unknown setting; accepted: {', '.join(HYPERPARAMETERS)}"
            )
            continue
        if section == "parameters" and name in spec.fixed:
            yield SpecIssue((section, name), "both fixed and searched; keep one")
            continue
        users = [m for m in methods if name in _reads(spec, m)]
        if not users:
            which = f"method {methods[0]!r} does not" if len(methods) == 1 else "no method"
            hint = ", ".join(_reads(spec, methods[0]))
            yield SpecIssue(
                (section, name),
                f"{which} use {name}"
                + (f" (settings it uses: {hint})" if len(methods) == 1 else ""),
            )
            continue
        parameter = spec.parameters.get(name) if section == "parameters" else None
        if name in INTEGER_SETTINGS and isinstance(parameter, FloatParameter):
            yield SpecIssue((section, name, "type"), f"{name} is an integer: use type int")
            continue
        values = [spec.fixed[name]] if parameter is None else _values_to_try(parameter)
        method = users[0]
        beside = {} if parameter is None else _used_by(spec, method, valid_fixed)
        problem = next(
            (p for v in values if (p := _config_problem(probe_base, method, {**beside, name: v}))),
            None,
        )
        if problem:
            yield SpecIssue((section, name), problem)
        elif parameter is None:
            valid_fixed[name] = spec.fixed[name]
    for method in methods:
        together = _used_by(spec, method, valid_fixed)
        problem = _config_problem(probe_base, method, together) if len(together) > 1 else None
        if problem:
            yield SpecIssue(("fixed",), problem if len(methods) == 1 else f"{method}: {problem}")
        for name, hint in METHODS[method].required.items():
            if name not in spec.fixed and name not in spec.parameters:
                yield SpecIssue(("fixed",), f"{method} needs {name} ({hint}): fix or search it")


def _reads(spec: SweepSpec, method: str) -> tuple[str, ...]:
    """The settings ``method`` may read in this spec's search (σ² learned where its switch is
    fixed on or searched)."""
    return METHODS[method].search_settings(spec.fixed, spec.parameters)


def _used_by(spec: SweepSpec, method: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    used = _reads(spec, method)
    return {name: value for name, value in settings.items() if name in used}


def _config_problem(
    probe_base: Mapping[str, Any], method: str, values: Mapping[str, Any]
) -> str | None:
    """Why TrainConfig refuses ``values`` for ``method`` (with ``probe_base`` from the dataset
    and model sections, and defaults elsewhere), if it does."""
    probe = {**_probe_defaults(method), **values}
    try:
        settings = METHODS[method].train_settings(probe)
        TrainConfig(**probe_base, **settings)
    except (TypeError, ValueError) as error:
        return str(error)
    return None


def _probe_defaults(method: str) -> dict[str, Any]:
    return {name: 0.01 for name in METHODS[method].required}


def _initial_point_issues(spec: SweepSpec) -> Iterator[SpecIssue]:
    for i, point in enumerate(spec.search.initial_points):
        at = ("search", "initial_points", i)
        method = point.get("method", spec.method)
        for name, value in point.items():
            parameter = spec.parameters.get(name)
            if parameter is None:
                yield SpecIssue((*at, name), f"not a searched parameter; searched: {_names(spec)}")
            elif not _within(parameter, value):
                yield SpecIssue((*at, name), f"{value!r} is outside {_describe(parameter)}")
            elif (
                name != "method"
                and isinstance(method, str)
                and method in METHODS
                and name not in _reads(spec, method)
            ):
                yield SpecIssue((*at, name), f"method {method!r} does not use {name}")


def _names(spec: SweepSpec) -> str:
    return ", ".join(spec.parameters) or "none"


def _within(parameter: Any, value: Any) -> bool:
    if isinstance(parameter, CategoricalParameter):
        return any(type(value) is type(c) and value == c for c in parameter.choices)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(parameter, IntParameter) and not isinstance(value, int):
        return False
    return math.isfinite(value) and parameter.low <= value <= parameter.high


def _describe(parameter: Any) -> str:
    if isinstance(parameter, CategoricalParameter):
        return f"choices {parameter.choices}"
    return f"[{parameter.low}, {parameter.high}] ({parameter.type})"


def _objective_issues(spec: SweepSpec) -> Iterator[SpecIssue]:
    seen: set[str] = set()
    for i, objective in enumerate(spec.objectives):
        if objective.metric not in OBJECTIVE_METRICS:
            hint = (
                "; test metrics are for reporting: searching on them leaks the test set"
                if objective.metric.startswith("test_")
                else ""
            )
            yield SpecIssue(
                ("objectives", i, "metric"),
                f"unknown objective {objective.metric!r}; accepted: "
                f"{', '.join(OBJECTIVE_METRICS)}{hint}",
            )
        if objective.metric in seen:
            yield SpecIssue(("objectives", i, "metric"), "each metric may appear once")
        seen.add(objective.metric)
    if spec.multi_objective and spec.search.algorithm == "cmaes":
        yield SpecIssue(
            ("search", "algorithm"),
            "cmaes optimises one objective; use tpe, gp, nsga2 or random for several",
        )
    if spec.search.population_size is not None and spec.search.algorithm != "nsga2":
        yield SpecIssue(("search", "population_size"), "only nsga2 has a population")


def _early_stopping_issues(spec: SweepSpec) -> Iterator[SpecIssue]:
    stopping = spec.early_stopping
    at = ("early_stopping",)
    if stopping.kind == "none":
        for field in ("metric", "goal", "max_t"):
            if getattr(stopping, field) is not None:
                yield SpecIssue((*at, field), "only used with kind: asha")
        return
    metric = stopping.metric or spec.objectives[0].metric
    if metric not in OBJECTIVE_METRICS:
        yield SpecIssue(
            (*at, "metric"), f"unknown metric {metric!r}; accepted: {', '.join(OBJECTIVE_METRICS)}"
        )
    epochs = max_epochs(spec)
    max_t = stopping.max_t or epochs
    if epochs is not None and max_t > epochs:
        yield SpecIssue((*at, "max_t"), f"max_t ({max_t}) exceeds a trial's epochs ({epochs})")
    if stopping.grace_period > max_t:
        yield SpecIssue(
            (*at, "grace_period"), f"grace_period ({stopping.grace_period}) exceeds max_t ({max_t})"
        )


# Measured: GP's ask+tell at 100 / 300 / 1,000 finished trials took 0.08 / 0.2 / 1.0 s.
GP_MAX_TRIALS = 1000


def _budget_issues(spec: SweepSpec, limits: Limits) -> Iterator[SpecIssue]:
    budget = spec.budget
    caps = [
        (("budget", "max_trials"), budget.max_trials, limits.max_trials),
        (
            ("budget", "max_concurrent_trials"),
            budget.max_concurrent_trials,
            limits.max_concurrent_trials,
        ),
        (("budget", "time_budget_s"), budget.time_budget_s, limits.max_time_budget_s),
    ]
    for loc, value, cap in caps:
        if value is not None and value > cap:
            yield SpecIssue(loc, f"{value} exceeds this deployment's cap of {cap}")
    if spec.search.algorithm == "gp" and budget.max_trials > GP_MAX_TRIALS:
        yield SpecIssue(
            ("search", "algorithm"),
            f"gp with budget.max_trials {budget.max_trials}: Optuna's GP sampler took about 1 s "
            f"per suggestion at 1,000 finished trials (benchmarks/sweep_scale_search.py), grows "
            f"up to cubically beyond, and every suggestion holds up the driver; use gp for at "
            f"most {GP_MAX_TRIALS} trials, or tpe or cmaes for more",
        )
    epochs = max_epochs(spec)
    if epochs > limits.max_epochs:
        where = ("parameters", "epochs") if "epochs" in spec.parameters else ("fixed", "epochs")
        yield SpecIssue(
            where, f"{epochs} epochs exceeds this deployment's cap of {limits.max_epochs}"
        )


def _resource_issues(spec: SweepSpec, limits: Limits) -> Iterator[SpecIssue]:
    for field, value, cap in (
        ("cpu", spec.resources.cpu, limits.max_trial_cpus),
        ("gpu", spec.resources.gpu, limits.max_trial_gpus),
    ):
        if value > cap:
            yield SpecIssue(
                ("resources", field),
                f"{value:g} per trial exceeds this deployment's cap of {cap:g} "
                f"(GRADREG_MAX_TRIAL_{field.upper()}S)",
            )
    gpu = spec.resources.gpu
    if gpu > 1 and gpu != int(gpu):
        yield SpecIssue(("resources", "gpu"), f"above one, GPUs come whole: got {gpu}")
    device = spec.fixed.get("device")
    if isinstance(device, str):
        if device.startswith("cuda") and gpu == 0:
            yield SpecIssue(("resources", "gpu"), f"device {device!r} needs resources.gpu > 0")
        if device == "cpu" and gpu > 0:
            yield SpecIssue(("resources", "gpu"), "device 'cpu' with a GPU reserved wastes it")


def _tracking_issues(spec: SweepSpec) -> Iterator[SpecIssue]:
    tracking = spec.tracking
    if tracking.register_best and not tracking.log_model:
        yield SpecIssue(
            ("tracking", "register_best"),
            "registering the best trial needs its model: set log_model: true, or leave "
            "register_best unset",
        )


def _code_issues(spec: SweepSpec) -> Iterator[SpecIssue]:
    for i, requirement in enumerate(spec.code.requirements):
        problem = requirement_problem(requirement)
        if problem is not None:
            yield SpecIssue(("code", "requirements", i), problem)


def requirement_problem(requirement: str) -> str | None:
    """Why ``requirement`` is not one the trials may install, or None: a PEP 508 requirement
    from the operator's package index (``einops==0.8.2``), or the absolute path of a wheel
    (``/wheels/mylayers-1.0-py3-none-any.whl``). pip's options (``--index-url``, ``-e``, ...)
    and direct URLs are refused: which index and which hosts packages come from is the
    operator's choice (pip's configuration on the workers), not a spec's."""
    from packaging.requirements import InvalidRequirement, Requirement

    text = requirement.strip()
    if text.startswith("-"):
        return (
            f"{requirement!r} is a pip option; requirements are package names with versions "
            "(einops==0.8.2) or wheel paths: the package index is the operator's to choose "
            "(pip's configuration on the workers)"
        )
    looks_like_path = text.endswith(".whl") or "/" in text.split(";")[0]
    if "@" not in text and looks_like_path:
        if not text.startswith("/"):
            return f"{requirement!r}: a wheel is given by its absolute path on the workers"
        if not text.endswith(".whl"):
            return f"{requirement!r}: a path must be a wheel (.whl); build one with pip wheel"
        return None
    try:
        parsed = Requirement(text)
    except InvalidRequirement as error:
        return f"{requirement!r} is not a PEP 508 requirement: {error}"
    if parsed.url is not None:
        return (
            f"{requirement!r} names a URL; give the package's name and version (the operator's "
            "index serves it) or the absolute path of a wheel on the workers"
        )
    return None
