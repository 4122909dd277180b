"""One concept, the preflight: one `TrainConfig` tried end to end in seconds, before a sweep's
first trial, so that code or settings that cannot train fail once, with a reason, instead of N
times.

`preflight(config)` runs these stages in order (`STAGES`) and times each:

1. ``import``: resolve the entry points (the model's builder, the dataset's loader): import
   their modules, get the functions, check they can be called;
2. ``data``: load the dataset as a trial does (a loader is called and its result checked
   against its contract, `gradreg.data.user_loaders`);
3. ``model``: build the network (seeded as a trial seeds it); a builder must return an
   ``nn.Module``;
4. ``forward``: one forward pass on the first min(batch_size, n_train) training examples, in
   training mode without gradients: the logits must be a floating tensor of shape
   (B, n_classes), all finite;
5. ``layers``: the method's Fisher estimator against the network's layers. ``per_example``
   refuses a layer it has no rule for, and BatchNorm (its batch statistics couple the
   examples), naming each such layer and the setting that works (``fisher: sampled``).
   ``exact`` works on any network but falls back to one backward pass per example and
   class where its per-layer rules do not apply: a note in the report, not an error;
6. ``step``: one real training step of the method's posterior (its loss, the backward and
   the optimiser's step) on a deep copy of the network, so nothing the preflight does
   reaches the caller's objects. It measures the memory the step needs (`step_memory`).

Every failure is a `PreflightError` (a `UserCodeError`, so a ValueError) whose ``stage``
names the stage, whose ``entry_point`` names the user's code at fault (None for a built-in
model or dataset), and whose message quotes the user's exception with the user's last
frames. The preflight leaves the caller's random number generators as they were, puts the
code on no path (the caller has: a Ray runtime environment, `gradreg.user_code.code_path`),
and writes no file itself (no checkpoint, artifact or bytecode cache; a loader does what it
does). ``compile`` is ignored: the step runs the network uncompiled.

Memory (``step_memory_bytes``): on CUDA, the peak of memory allocated during the step above
what was allocated before its copy of the network reached the device, so everything the
step holds at its peak (weights, gradients, optimiser state, activations, temporaries), plus
the batch, which was on the device before (``memory``: ``peak_allocated``, ``batch``). On
the CPU, which keeps no peak, the sum of what lives across the step, each storage counted
once: the posterior's parameters and buffers (means and variances), their gradients, the
optimiser's state, the batch, and the tensors autograd saved for the backward passes (read
with `torch.autograd.graph.saved_tensors_hooks`, the stretch of each storage they cover,
less the parameters' and the batch's own). Transient temporaries are not counted, so on the
CPU it is a lower bound of the peak.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gradreg.config import TrainConfig
from gradreg.curvature.layer_rules import per_example_obstacle
from gradreg.data import Dataset
from gradreg.data.user_loaders import LOADER
from gradreg.device import resolve_device
from gradreg.methods import METHODS
from gradreg.models import BUILDER, build_model
from gradreg.posteriors.gaussian import GaussianPosterior
from gradreg.train import load_config_dataset, make_optimiser, posterior_around, train_step
from gradreg.user_code import UserCodeError, describe_exception, is_entry_point, resolve

STAGES = ("import", "data", "model", "forward", "layers", "step")
WORKS_EVERYWHERE = "sampled"  # the Fisher estimator that works for any architecture


class PreflightError(UserCodeError):
    """A preflight that failed at ``stage`` (one of `STAGES`); the other fields are
    `UserCodeError`'s. The message starts with the stage."""

    def __init__(self, stage: str, entry_point: str | None, problem: str, **fields: Any) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; accepted: {', '.join(STAGES)}")
        self.stage = stage
        super().__init__(entry_point, problem, **fields)

    def _message(self) -> str:
        return f"preflight failed at stage {self.stage!r}: {super()._message()}"

    def _fields(self) -> dict[str, Any]:
        return {"stage": self.stage, **super()._fields()}

    @classmethod
    def of(cls, stage: str, error: UserCodeError) -> PreflightError:
        """``error`` (a user code error from the stage) with its stage."""
        return cls(
            stage,
            error.entry_point,
            error.problem,
            kind=error.kind,
            role=error.role,
            exception=error.exception,
            frames=error.frames,
        )


@dataclass(frozen=True)
class PreflightReport:
    """What the preflight found: the code and data, the network's size, one step's memory
    and each stage's seconds."""

    model: str  # the config's: a built-in name or an entry point
    dataset: str
    entry_points: tuple[str, ...]  # the user's code among them, model first
    method: str  # the method table's name
    fisher: str | None
    device: str
    n_train: int
    n_val: int
    n_test: int
    input_shape: tuple[int, ...]
    n_classes: int
    n_parameters: int  # the network's, every parameter (sum of numel)
    step_memory_bytes: int
    # the parts of step_memory_bytes: on the CPU parameters, gradients, optimiser_state,
    # batch, saved_tensors; on CUDA peak_allocated and batch
    memory: Mapping[str, int] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)  # stage -> seconds
    notes: tuple[str, ...] = ()  # what works but is worth knowing (a slow Fisher path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able."""
        values = asdict(self)
        values.update(
            entry_points=list(self.entry_points),
            input_shape=list(self.input_shape),
            memory=dict(self.memory),
            seconds=dict(self.seconds),
            notes=list(self.notes),
        )
        return values


def preflight(
    config: TrainConfig | Mapping[str, Any], *, device: str | None = None
) -> PreflightReport:
    """Try ``config`` end to end (see the module's docstring); ``device`` overrides the
    config's (e.g. "cpu" in a driver without a GPU). Raises `PreflightError`; a device this
    process does not have is a ValueError before any stage, as in `fit`."""
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(dict(config))
    target = resolve_device(config.device if device is None else device)
    run = _Run(config, target)
    forked = [target.index or 0] if target.type == "cuda" else []
    with _no_bytecode(), torch.random.fork_rng(devices=forked):
        with run.stage("import"):
            for entry_point in config.entry_points:
                resolve(entry_point, BUILDER if entry_point == config.model else LOADER)
        with run.stage("data"):
            data = load_config_dataset(config)
        with run.stage("model"):
            torch.manual_seed(config.seed)
            network = build_model(
                config.model, data.input_shape, data.n_classes, **config.model_options
            )
            pristine = copy.deepcopy(network)
        size = min(config.batch_size, data.n_train)
        x, y = data.x_train[:size].clone().to(target), data.y_train[:size].clone().to(target)
        with run.stage("forward"):
            _check_forward(run, network.to(target), x, data.n_classes)
        with run.stage("layers"):
            notes = _check_layers(run, network)
        with run.stage("step"):
            memory = _one_step(config, pristine, data, x, y, target)
    return PreflightReport(
        model=config.model,
        dataset=config.dataset,
        entry_points=config.entry_points,
        method=config.method_name,
        fisher=config.fisher,
        device=str(target),
        n_train=data.n_train,
        n_val=data.n_val,
        n_test=data.n_test,
        input_shape=data.input_shape,
        n_classes=data.n_classes,
        n_parameters=sum(p.numel() for p in network.parameters()),
        step_memory_bytes=sum(memory.values()),
        memory=memory,
        seconds=dict(run.seconds),
        notes=tuple(notes),
    )


class _Run:
    """The stages' timings, and their failures as PreflightErrors."""

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.seconds: dict[str, float] = {}

    def owner(self, stage: str) -> tuple[str | None, str]:
        """The entry point and role a stage's failure is about: the loader's for data, the
        builder's after it."""
        value, role = (
            (self.config.dataset, LOADER) if stage == "data" else (self.config.model, BUILDER)
        )
        if is_entry_point(value):
            return value, role
        return None, f"{'dataset' if stage == 'data' else 'model'} {value!r}"

    def fail(self, stage: str, problem: str, kind: str = "result") -> PreflightError:
        entry_point, role = self.owner(stage)
        if entry_point is None:
            problem = f"{role}: {problem}"
        return PreflightError(stage, entry_point, problem, kind=kind, role=role)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except PreflightError:
            raise
        except UserCodeError as error:
            raise PreflightError.of(name, error) from error
        except Exception as error:
            raise self._failed(name, error) from error
        finally:
            self.seconds[name] = time.perf_counter() - started

    def _failed(self, stage: str, error: Exception) -> PreflightError:
        """An exception that is not already about user code: where the network ran (forward,
        step) the user's code raised it, quoted with its frames; elsewhere gradreg refused a
        setting (a split that cannot be made, a missing data file), in its own words."""
        entry_point, role = self.owner(stage)
        if stage in ("forward", "step"):
            problem = "raised" if entry_point else f"{role}: raised"
            return PreflightError.of(
                stage,
                UserCodeError.from_exception(entry_point, problem, error, kind="call", role=role),
            )
        return self.fail(stage, describe_exception(error), kind="config")


@contextmanager
def _no_bytecode() -> Iterator[None]:
    writes = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = writes


def _check_forward(run: _Run, network: nn.Module, x: Tensor, n_classes: int) -> None:
    network.train()
    with torch.no_grad():
        logits = network(x)
    batch = tuple(x.shape)
    if not isinstance(logits, Tensor):
        raise run.fail(
            "forward",
            f"the network's forward pass on a batch of shape {batch} returned "
            f"{type(logits).__name__}, not a tensor of logits (B, n_classes)",
        )
    expected = (len(x), n_classes)
    if tuple(logits.shape) != expected:
        raise run.fail(
            "forward",
            f"the network's forward pass on a batch of shape {batch} gives logits of shape "
            f"{tuple(logits.shape)}; expected {expected}: (batch, n_classes)",
        )
    if not logits.dtype.is_floating_point:
        raise run.fail(
            "forward", f"the network's logits have dtype {logits.dtype}; they must be floating"
        )
    bad = int((~torch.isfinite(logits)).sum())
    if bad:
        raise run.fail(
            "forward", f"the network's logits hold {bad} NaN or infinite value(s) at its start"
        )


def _check_layers(run: _Run, network: nn.Module) -> list[str]:
    """Refuse a Fisher estimator the layers rule out; notes on a slow one."""
    method, fisher = METHODS[run.config.method_name], run.config.fisher
    if not method.uses_fisher or fisher is None or fisher == WORKS_EVERYWHERE:
        return []
    params = [p for p in network.parameters() if p.requires_grad]
    obstacle = per_example_obstacle(network, params)
    if obstacle is None:
        return []
    if fisher == "per_example":
        raise run.fail(
            "layers",
            f"method {method.name!r} with fisher 'per_example' cannot train this network: "
            f"{obstacle}. Set fisher to {WORKS_EVERYWHERE!r}, which works for any "
            "architecture",
            kind="config",
        )
    return [
        f"fisher {fisher!r} has no per-layer rule for this network ({obstacle}): it takes one "
        "backward pass per example and class, so it is slow; fisher "
        f"{WORKS_EVERYWHERE!r} takes one per batch"
    ]


def _one_step(
    config: TrainConfig,
    pristine: nn.Module,
    data: Dataset,
    x: Tensor,
    y: Tensor,
    device: torch.device,
) -> dict[str, int]:
    """One training step on a copy; the memory it needs, by part."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    network = copy.deepcopy(pristine).to(device)
    posterior = posterior_around(network, config.replace(compile=False), data.n_train).to(device)
    optimiser = make_optimiser(posterior, config)
    sampling = torch.Generator(device=device).manual_seed(config.seed + 1)
    saved = _SavedTensors()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        train_step(posterior, optimiser, x, y, config, sampling)
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        return {"peak_allocated": peak, "batch": _bytes((x, y))}
    return _cpu_memory(posterior, optimiser, (x, y), saved)


class _SavedTensors:
    """The stretch of each storage that autograd saved tensors cover: storage -> [start, end)
    in bytes."""

    def __init__(self) -> None:
        self.extents: dict[int, tuple[int, int]] = {}

    def pack(self, tensor: Tensor) -> Tensor:
        if tensor.numel() and tensor.layout == torch.strided:
            size = tensor.element_size()
            start = int(tensor.storage_offset()) * size
            shape, strides = tensor.shape, tensor.stride()
            reach = sum(int(n - 1) * int(step) for n, step in zip(shape, strides, strict=True))
            end = start + (reach + 1) * size
            try:
                key = tensor.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):  # no storage of its own: no memory
                return tensor
            low, high = self.extents.get(key, (start, end))
            self.extents[key] = (min(low, start), max(high, end))
        return tensor

    def unpack(self, tensor: Tensor) -> Tensor:
        return tensor


def _cpu_memory(
    posterior: GaussianPosterior,
    optimiser: torch.optim.Optimizer,
    batch: tuple[Tensor, ...],
    saved: _SavedTensors,
) -> dict[str, int]:
    tensors = [*posterior.parameters(), *posterior.buffers()]
    gradients = [p.grad for p in posterior.parameters() if p.grad is not None]
    state = [
        value
        for values in optimiser.state.values()
        for value in values.values()
        if isinstance(value, Tensor)
    ]
    own = {t.untyped_storage().data_ptr() for t in [*tensors, *batch]}
    return {
        "parameters": _bytes(tensors),
        "gradients": _bytes(gradients),
        "optimiser_state": _bytes(state),
        "batch": _bytes(batch),
        "saved_tensors": sum(
            end - start for key, (start, end) in saved.extents.items() if key not in own
        ),
    }


def _bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def describe(report: PreflightReport) -> str:
    """The report in a few lines, for a log or a terminal."""
    megabytes = report.step_memory_bytes / 2**20
    timings = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in report.seconds.items())
    lines = [
        f"preflight passed: {report.model} on {report.dataset} ({report.method}, {report.device})",
        f"  data: {report.n_train} train, {report.n_val} val, {report.n_test} test examples of "
        f"shape {report.input_shape}, {report.n_classes} classes",
        f"  network: {report.n_parameters:,} parameters; one step needs {megabytes:.1f} MiB",
        f"  {timings}",
    ]
    lines += [f"  note: {note}" for note in report.notes]
    return "\n".join(lines)
