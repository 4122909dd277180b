"""Classifier architectures by name, or a user's builder by entry point; every model maps a
batch of inputs to logits.

A user's builder is named ``"package.module:function"`` (`gradreg.user_code`) and called as
``build(input_shape, n_classes, **options)``: ``input_shape`` the shape of one example as a
tuple of ints (what the loader gives, e.g. ``(1, 64)``), ``n_classes`` an int >= 2, and the
options as keyword arguments, the builder's own to check. It returns a ``torch.nn.Module``
that maps a batch ``(B, *input_shape)`` of float32 inputs to logits ``(B, n_classes)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from gradreg.user_code import UserCodeError, call, described, is_entry_point

BUILDER = "model builder"  # the role a user's builder plays in an error message

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _positive_int(option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{option} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{option} must be a positive int, got {value}")
    return value


def _positive_ints(option: str, values: Any, *, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            f"{option} must be a sequence of positive ints, e.g. (64, 64); got {values!r}"
        )
    if not values and not allow_empty:
        raise ValueError(f"{option} must hold at least one size, got {values!r}")
    return tuple(_positive_int(f"{option}[{i}]", value) for i, value in enumerate(values))


def _activation(value: Any) -> str:
    if not isinstance(value, str) or value not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {value!r}; accepted: {', '.join(_ACTIVATIONS)}")
    return value


def _require_rank(model: str, input_shape: tuple[int, ...], ranks: dict[int, str]) -> None:
    if len(input_shape) not in ranks:
        expected = " or ".join(ranks.values())
        hint = "; use 'mlp' for tabular data" if len(input_shape) == 1 else ""
        raise ValueError(f"{model} needs input_shape {expected}, got {input_shape}{hint}")


# ---------------------------------------------------------------- mlp


def _build_mlp(
    input_shape: tuple[int, ...],
    n_classes: int,
    *,
    hidden: Sequence[int] = (128, 128),
    activation: str = "relu",
) -> nn.Module:
    widths = _positive_ints("hidden", hidden, allow_empty=True)
    activation = _activation(activation)
    layers: list[nn.Module] = [nn.Flatten()]
    in_features = _product(input_shape)
    for width in widths:
        layers += [nn.Linear(in_features, width), _ACTIVATIONS[activation]()]
        in_features = width
    layers.append(nn.Linear(in_features, n_classes))
    return nn.Sequential(*layers)


def _product(values: Sequence[int]) -> int:
    result = 1
    for value in values:
        result *= value
    return result


# ---------------------------------------------------------------- cnn


def _build_cnn(
    input_shape: tuple[int, ...],
    n_classes: int,
    *,
    channels: Sequence[int] = (16, 32),
    hidden: int = 64,
    kernel_size: int = 3,
) -> nn.Module:
    _require_rank("cnn", input_shape, {3: "(C, H, W)", 2: "(C, L)"})
    conv_channels = _positive_ints("channels", channels, allow_empty=False)
    hidden = _positive_int("hidden", hidden)
    kernel_size = _positive_int("kernel_size", kernel_size)
    conv, pool = (nn.Conv2d, nn.MaxPool2d) if len(input_shape) == 3 else (nn.Conv1d, nn.MaxPool1d)

    in_channels, spatial = input_shape[0], list(input_shape[1:])
    padding = kernel_size // 2
    layers: list[nn.Module] = []
    for out_channels in conv_channels:
        layers += [conv(in_channels, out_channels, kernel_size, padding=padding), nn.ReLU()]
        spatial = [size + 2 * padding - kernel_size + 1 for size in spatial]
        # Small inputs (digits are 8x8) would vanish if pooled after every conv.
        if all(size // 2 >= 2 for size in spatial):
            layers.append(pool(2))
            spatial = [size // 2 for size in spatial]
        in_channels = out_channels
    layers += [
        nn.Flatten(),
        nn.Linear(in_channels * _product(spatial), hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_classes),
    ]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- resnets


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with a residual connection (He et al., 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        activated: torch.Tensor = self.relu2(out + self.shortcut(x))
        return activated


def _cifar_resnet(
    input_shape: tuple[int, ...], n_classes: int, widths: Sequence[int], blocks_per_stage: int
) -> nn.Module:
    """3x3 stride-1 stem without max-pool, stages of BasicBlocks, global average pool."""
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], widths[0], 3, 1, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(),
    ]
    in_channels = widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(in_channels, width, stride))
            in_channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, n_classes)]
    return nn.Sequential(*layers)


def _build_resnet18(input_shape: tuple[int, ...], n_classes: int, *, width: int = 64) -> nn.Module:
    _require_rank("resnet18", input_shape, {3: "(C, H, W)"})
    width = _positive_int("width", width)
    return _cifar_resnet(input_shape, n_classes, [width, 2 * width, 4 * width, 8 * width], 2)


def _build_resnet20(input_shape: tuple[int, ...], n_classes: int, *, width: int = 16) -> nn.Module:
    _require_rank("resnet20", input_shape, {3: "(C, H, W)"})
    width = _positive_int("width", width)
    return _cifar_resnet(input_shape, n_classes, [width, 2 * width, 4 * width], 3)


# ---------------------------------------------------------------- registry

_MODELS: dict[str, tuple[str, Callable[..., nn.Module]]] = {
    "mlp": ("fully connected net on flattened inputs (hidden=() is linear softmax)", _build_mlp),
    "cnn": ("small CNN for (C, H, W) images or (C, L) signals", _build_cnn),
    "resnet18": (
        "CIFAR-style ResNet-18 with BatchNorm, ~11.2M params at width 64",
        _build_resnet18,
    ),
    "resnet20": (
        "CIFAR-style ResNet-20 with BatchNorm, ~0.27M params at width 16",
        _build_resnet20,
    ),
}


def _accepted_options(build: Callable[..., nn.Module]) -> dict[str, Any]:
    parameters = inspect.signature(build).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def available_models() -> dict[str, str]:
    """Model names mapped to a one-line description."""
    return {name: description for name, (description, _) in _MODELS.items()}


def model_options(name: str) -> dict[str, Any]:
    """The options model `name` accepts, with their defaults."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(_MODELS)}")
    return _accepted_options(_MODELS[name][1])


# Each option's check, so a sweep spec is judged before any trial builds a model.
_OPTION_CHECKS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "mlp": {
        "hidden": lambda value: _positive_ints("hidden", value, allow_empty=True),
        "activation": _activation,
    },
    "cnn": {
        "channels": lambda value: _positive_ints("channels", value, allow_empty=False),
        "hidden": lambda value: _positive_int("hidden", value),
        "kernel_size": lambda value: _positive_int("kernel_size", value),
    },
    "resnet18": {"width": lambda value: _positive_int("width", value)},
    "resnet20": {"width": lambda value: _positive_int("width", value)},
}


def model_option_problems(name: str, options: dict[str, Any]) -> dict[str, str]:
    """Option -> why its value is not accepted, for the options of model ``name`` it knows
    (none of a user's builder: its options are its own to check, when it is called)."""
    checks = _OPTION_CHECKS.get(name, {})
    problems: dict[str, str] = {}
    for option, value in options.items():
        if option in checks:
            try:
                checks[option](value)
            except (TypeError, ValueError) as error:
                problems[option] = str(error)
    return problems


def build_model(
    name: str, input_shape: tuple[int, ...], n_classes: int, **options: Any
) -> nn.Module:
    """Build model `name` for examples of shape `input_shape`; it returns `n_classes` logits.

    `name` is a built-in model (`available_models`) or a user's builder
    ``"package.module:function"``, imported and called with the options as keyword
    arguments; what it returns must be an ``nn.Module`` (else a `UserCodeError`)."""
    user = is_entry_point(name)
    if not user and name not in _MODELS:
        raise ValueError(
            f"unknown model {name!r}; available: {', '.join(_MODELS)}, or a builder "
            "'package.module:function'"
        )
    shape = _positive_ints("input_shape", input_shape, allow_empty=False)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int):
        raise TypeError(f"n_classes must be an int >= 2, got {n_classes!r}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if user:
        return _build_user_model(name, shape, n_classes, options)
    build = _MODELS[name][1]
    accepted = _accepted_options(build)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        listed = ", ".join(f"{option}={default!r}" for option, default in accepted.items())
        raise TypeError(f"unknown option(s) {', '.join(unknown)} for {name!r}; accepted: {listed}")
    return build(shape, n_classes, **options)


def _build_user_model(
    entry_point: str, input_shape: tuple[int, ...], n_classes: int, options: dict[str, Any]
) -> nn.Module:
    built = call(entry_point, input_shape, n_classes, role=BUILDER, **options)
    if not isinstance(built, nn.Module):
        hint = " (an instance of it is)" if inspect.isclass(built) else ""
        raise UserCodeError(
            entry_point,
            f"returned {described(built)}, not a torch.nn.Module{hint}; a builder returns the "
            "network: build(input_shape, n_classes, **options) -> nn.Module",
            kind="result",
            role=BUILDER,
        )
    return built
