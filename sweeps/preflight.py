"""The sweep's preflight: `gradreg.preflight` run before the first trial, as a Ray task with one
trial's resources, so that it runs in the sweep's runtime environment (its code bundle and
requirements) on a worker. The driver never imports the user's code itself.

When: a sweep whose model or dataset names an entry point, or that ships code (a bundle or
requirements), on a fresh run and on every resume.

Which settings (`preflight_values`): the spec's fixed settings with every searched parameter
at a representative value (a float's or an integer's midpoint, geometric on a log scale,
snapped to its step; a categorical's first choice), except ``batch_size`` at its largest (the
memory one step needs grows with it), once per method when ``method`` is searched and once
per estimator when ``fisher`` is searched (for the methods that read it). The first failure
ends the preflight.

A failure fails the sweep before any trial starts: its reason is the `PreflightError`'s text
(the stage, the entry point and the user's exception with their last frames). A task that no
node can place fails it after the placement timeout (GRADREG_PLACEMENT_TIMEOUT_S), as a trial
would; a runtime environment that cannot be set up (a requirement pip cannot install) fails
it with Ray's words.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError, RuntimeEnvSetupError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from gradreg.methods import METHODS
from sweeps.spec import CategoricalParameter, FloatParameter, IntParameter, SweepSpec
from sweeps.spec.resolve import trial_config

LARGEST = ("batch_size",)  # searched settings the preflight tries at their largest
EACH = ("method", "fisher")  # searched settings it tries every choice of


@dataclass(frozen=True)
class PreflightOutcome:
    """What the preflight found: its reports (one per settings tried, JSON-able), or why it
    failed (``failure``, the sweep's reason)."""

    reports: tuple[dict[str, Any], ...] = ()
    failure: str | None = None
    stopped: bool = False

    @property
    def passed(self) -> bool:
        return self.failure is None and not self.stopped


def needs_preflight(spec: SweepSpec) -> bool:
    """Whether the sweep runs the user's code: an entry point, or code it ships."""
    return bool(
        spec.model.entry_point
        or spec.dataset.entry_point
        or spec.code.digest
        or spec.code.requirements
    )


def preflight_values(spec: SweepSpec) -> list[dict[str, Any]]:
    """The searched values of each setting the preflight tries (see the module's docstring);
    the settings whose TrainConfig would be the same are tried once."""
    base = {
        name: representative(name, parameter)
        for name, parameter in spec.parameters.items()
        if name not in EACH
    }
    methods = spec.methods
    fishers = _choices(spec, "fisher")
    tried: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    for method in methods:
        reads_fisher = "fisher" in METHODS[method].settings(True) + METHODS[method].settings(False)
        for fisher in fishers if fishers and reads_fisher else [None]:
            values = dict(base)
            if "method" in spec.parameters:
                values["method"] = method
            if fisher is not None:
                values["fisher"] = fisher
            config = trial_config(spec, values).to_dict()
            if config not in seen:
                seen.append(config)
                tried.append(values)
    return tried


def _choices(spec: SweepSpec, name: str) -> list[Any]:
    parameter = spec.parameters.get(name)
    return list(parameter.choices) if isinstance(parameter, CategoricalParameter) else []


def representative(name: str, parameter: Any) -> Any:
    """The value the preflight gives a searched parameter."""
    if isinstance(parameter, CategoricalParameter):
        if name in LARGEST:
            return max(parameter.choices, key=lambda c: c if isinstance(c, int | float) else 0)
        return parameter.choices[0]
    if isinstance(parameter, IntParameter):
        if name in LARGEST:
            return parameter.low + (parameter.high - parameter.low) // parameter.step * (
                parameter.step
            )
        if parameter.scale == "log":
            return min(parameter.high, round(math.sqrt(parameter.low * parameter.high)))
        half = (parameter.high - parameter.low) / 2
        return parameter.low + round(half / parameter.step) * parameter.step
    assert isinstance(parameter, FloatParameter)
    if name in LARGEST:
        return parameter.high
    if parameter.scale == "log":
        return math.sqrt(parameter.low * parameter.high)
    middle = (parameter.low + parameter.high) / 2
    if parameter.step is not None:
        middle = parameter.low + round((middle - parameter.low) / parameter.step) * parameter.step
    return middle


def run_preflight(
    spec: SweepSpec,
    data_root: str | None,
    *,
    placement_timeout_s: float,
    should_stop: Callable[[], bool] | None = None,
    poll_s: float = 1.0,
) -> PreflightOutcome:
    """Run the preflight as a Ray task with one trial's resources (Ray must be up, with the
    sweep's runtime environment); see the module's docstring."""
    values = preflight_values(spec)
    bundle: dict[str, float] = {"CPU": spec.resources.cpu}
    if spec.resources.gpu:
        bundle["GPU"] = spec.resources.gpu
    group = placement_group([bundle])
    try:
        ready, _ = ray.wait([group.ready()], timeout=placement_timeout_s)
        if not ready:
            return PreflightOutcome(
                failure=f"the preflight waited {placement_timeout_s:g} s for {bundle} and "
                f"nothing could run it (GRADREG_PLACEMENT_TIMEOUT_S={placement_timeout_s:g}); "
                "the cluster has too few CPUs or GPUs for one trial: lower resources.cpu/gpu"
            )
        task = ray.remote(_preflight_task).options(
            num_cpus=spec.resources.cpu,
            num_gpus=spec.resources.gpu,
            max_retries=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, 0),
        )
        reference = task.remote(spec, values, data_root)
        while True:
            done, _ = ray.wait([reference], timeout=poll_s)
            if done:
                break
            if should_stop is not None and should_stop():
                ray.cancel(reference, force=True)
                return PreflightOutcome(stopped=True)
        try:
            found: dict[str, Any] = ray.get(reference)
        except RuntimeEnvSetupError as error:
            return PreflightOutcome(
                failure=f"the sweep's runtime environment could not be set up for its "
                f"preflight: {error}"
            )
        except RayError as error:  # the task itself broke (not the user's code: it returns that)
            return PreflightOutcome(failure=f"the preflight could not run: {error}")
    finally:
        remove_placement_group(group)
    if found.get("failure") is not None:
        return PreflightOutcome(tuple(found["reports"]), failure=str(found["failure"]))
    return PreflightOutcome(tuple(found["reports"]))


def _preflight_task(
    spec: SweepSpec, values: list[dict[str, Any]], data_root: str | None
) -> dict[str, Any]:
    """In the sweep's runtime environment, on a worker: each settings' preflight in turn.
    Returns plain data only (the reports, or the failure's text), never the user's objects,
    so that the driver unpickles nothing of theirs."""
    import torch

    from gradreg.preflight import preflight
    from gradreg.user_code import UserCodeError
    from sweeps.placement import Placement, trial_device

    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    reports: list[dict[str, Any]] = []
    root = Path(data_root) if data_root else None
    placement = Placement.here()
    for searched in values:
        started = time.monotonic()
        try:
            config = trial_config(spec, searched, root)
            device, _ = trial_device(config.device, spec.resources.gpu, placement)
            report = preflight(config, device=str(device)).to_dict()
        except UserCodeError as error:  # a PreflightError: the stage, the code, their frames
            return {"reports": reports, "failure": _with_values(str(error), searched)}
        except Exception as error:  # the settings or the node (a device it lacks)
            failure = f"preflight failed: {type(error).__name__}: {error}"
            return {"reports": reports, "failure": _with_values(failure, searched)}
        reports.append({**report, "values": searched, "wall_s": time.monotonic() - started})
    return {"reports": reports, "failure": None}


def _with_values(message: str, searched: Mapping[str, Any]) -> str:
    """The failure's text, with the searched values it was found with (if any) at the end of
    its first line."""
    if not searched:
        return message
    shown = ", ".join(f"{k}={v!r}" for k, v in searched.items())
    first, _, rest = message.partition("\n")
    return f"{first} (with {shown})" + (f"\n{rest}" if rest else "")


def summary_tags(reports: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The parent run's tags from a passed preflight: the network's parameter count, the
    most memory one step needed, the input shape and classes, how many settings were tried."""
    if not reports:
        return {}
    first = reports[0]
    return {
        "gradreg.preflight.settings_tried": str(len(reports)),
        "gradreg.preflight.n_parameters": str(max(int(r["n_parameters"]) for r in reports)),
        "gradreg.preflight.step_memory_bytes": str(
            max(int(r["step_memory_bytes"]) for r in reports)
        ),
        "gradreg.preflight.input_shape": "x".join(str(n) for n in first["input_shape"]),
        "gradreg.preflight.n_classes": str(first["n_classes"]),
        "gradreg.preflight.device": str(first["device"]),
    }


def describe_reports(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    """A passed preflight in a few lines for the driver's output."""
    lines = []
    for report in reports:
        shown = ", ".join(f"{k}={v}" for k, v in report.get("values", {}).items())
        megabytes = int(report["step_memory_bytes"]) / 2**20
        lines.append(
            f"preflight passed: {report['model']} on {report['dataset']} ({report['method']}"
            f"{', fisher ' + str(report['fisher']) if report.get('fisher') else ''}, "
            f"{report['device']}{'; ' + shown if shown else ''}): "
            f"{report['n_train']} train examples of shape {tuple(report['input_shape'])}, "
            f"{report['n_classes']} classes, {int(report['n_parameters']):,} parameters, "
            f"one step {megabytes:.1f} MiB, {report['wall_s']:.1f} s"
        )
        lines += [f"  note: {note}" for note in report.get("notes", [])]
    return lines
