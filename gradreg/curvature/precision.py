"""Which arithmetic float32 work runs in: torch's TF32 flags, read, set for a while, emulated.

On NVIDIA GPUs since Ampere, float32 convolutions run by default in TensorFloat-32: their
inputs rounded to a 10-bit mantissa, products summed in float32 (matrix products too where
``torch.backends.cuda.matmul`` allows it). That is a machine epsilon of 2⁻¹⁰ instead of
2⁻²³, which a finite difference of two gradients cannot stand (see `finite_difference`).

- `tf32_convolutions` and `tf32_matmuls` read torch's flags, through the ``fp32_precision``
  settings where this torch has them (2.9 and later; mixing them with the older
  ``allow_tf32`` flags makes the latter raise) and ``allow_tf32`` before.
- `tf32` sets convolutions (cuDNN's and its RNNs') and matrix products to TF32 or to true
  float32 for the length of a ``with`` block and puts every flag back as it was, so that
  neither a training run (`TrainConfig.tf32`) nor one pass leaves torch's global state
  changed.
- `EmulatedTF32` rounds the inputs of every float32 convolution (forward and backward) and,
  where the flags allow it, of every matrix product to TF32's 10 bits, whenever the flags say
  a GPU would: TF32's arithmetic on a machine without one, so that its effect on a gradient
  can be measured and tested on the CPU. It models the rounding of the inputs, not cuDNN's
  choice of algorithm or its order of summation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

TF32_EPSILON = 2.0**-10  # TensorFloat-32 keeps 10 bits of mantissa
# TrainConfig.tf32: leave torch's flags as they are, or TF32 on or off for the run.
TF32_SETTINGS: tuple[str, ...] = ("default", "on", "off")

# torch.backends' settings are properties its modules gain at import: no type stubs.
_backends: Any = torch.backends
_NEW_API = hasattr(_backends.cudnn, "conv")  # torch >= 2.9: the fp32_precision settings
_TF32_BITS = 13  # float32 keeps 23 bits of mantissa, TF32 10


def _resolved(*levels: str) -> str:
    """An ``fp32_precision`` setting: the first level that is not ``none`` (which defers to
    its parent), else float32 proper."""
    return next((level for level in levels if level != "none"), "ieee")


def tf32_convolutions() -> bool:
    """Whether torch lets float32 convolutions run in TF32 now (it does by default)."""
    if _NEW_API:
        setting = _resolved(
            _backends.cudnn.conv.fp32_precision,
            _backends.cudnn.fp32_precision,
            _backends.fp32_precision,
        )
        return setting != "ieee"
    return bool(torch.backends.cudnn.allow_tf32)


def tf32_matmuls() -> bool:
    """Whether torch lets float32 matrix products run in TF32 now (not by default)."""
    if _NEW_API:
        setting = _resolved(_backends.cuda.matmul.fp32_precision, _backends.fp32_precision)
        return setting != "ieee"
    return bool(torch.backends.cuda.matmul.allow_tf32)


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """Inside: float32 convolutions (cuDNN's RNNs too) and matrix products in TF32
    (``enabled``) or in float32 proper. After: every flag as it was on entry.

    Through the ``allow_tf32`` flags where they can be read, since torch.compile's kernels
    read them and they raise once the newer settings disagree with them; through the newer
    ``fp32_precision`` settings where a user has already set those apart. Either way the
    newer settings are restored exactly (a ``none`` stays ``none``).
    """
    raw = _raw_settings()
    try:
        legacy: tuple[bool, bool] | None = (
            bool(torch.backends.cudnn.allow_tf32),
            bool(torch.backends.cuda.matmul.allow_tf32),
        )
    except RuntimeError:  # the newer settings were set apart from the legacy flags
        legacy = None
    try:
        if legacy is not None:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
        else:
            value = "tf32" if enabled else "ieee"
            assert raw is not None  # the newer settings exist where the legacy flags raise
            _set_raw_settings((value, value, raw[2], value))
        yield
    finally:
        if legacy is not None:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = legacy
        _set_raw_settings(raw)


_Raw = tuple[str, str, str, str]


def _raw_settings() -> _Raw | None:
    """cuDNN's conv, RNN and own ``fp32_precision``, and the matrix products', as set."""
    if not _NEW_API:  # pragma: no cover - torch < 2.9
        return None
    cudnn = _backends.cudnn
    return (
        cudnn.conv.fp32_precision,
        cudnn.rnn.fp32_precision,
        cudnn.fp32_precision,
        _backends.cuda.matmul.fp32_precision,
    )


def _set_raw_settings(raw: _Raw | None) -> None:
    if raw is None:  # pragma: no cover - torch < 2.9
        return
    cudnn = _backends.cudnn
    cudnn.fp32_precision = raw[2]  # the parent first: setting it may reset its children
    cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = raw[0], raw[1]
    _backends.cuda.matmul.fp32_precision = raw[3]


def tf32_setting(setting: str) -> Any:
    """The context a run with ``TrainConfig.tf32 = setting`` trains in: ``default`` leaves
    torch's flags alone, ``on`` and ``off`` set them for the run (`tf32`)."""
    if setting not in TF32_SETTINGS:
        raise ValueError(f"unknown tf32 {setting!r}; accepted: {', '.join(TF32_SETTINGS)}")
    return nullcontext() if setting == "default" else tf32(setting == "on")


def round_to_tf32(t: Tensor) -> Tensor:
    """``t`` (float32) rounded to TF32's 10-bit mantissa, to nearest with ties away from
    zero as NVIDIA's conversion does (infinities and NaNs kept); any other dtype unchanged."""
    if t.dtype != torch.float32:
        return t
    bits = t.contiguous().view(torch.int32)
    half = 1 << (_TF32_BITS - 1)
    mask = -(1 << _TF32_BITS)  # ...1110_0000_0000_0000 as a signed 32-bit integer
    rounded = ((bits + half) & mask).view(torch.float32).view_as(t)
    return torch.where(torch.isfinite(t), rounded, t)


_aten = torch.ops.aten
# The tensors (by position) that a TF32 kernel rounds: inputs and weights of a convolution,
# the output's gradient too in its backward, the two factors of a matrix product.
_CONVOLUTIONS = {_aten.convolution.default: (0, 1), _aten.convolution_backward.default: (0, 1, 2)}
_MATMULS = {
    _aten.mm.default: (0, 1),
    _aten.bmm.default: (0, 1),
    _aten.addmm.default: (1, 2),
    _aten.baddbmm.default: (1, 2),
}


class EmulatedTF32(TorchDispatchMode):
    """Inside: float32 convolutions and matrix products round their inputs to TF32 as an
    NVIDIA GPU would with torch's flags as they are at each call (`tf32_convolutions`,
    `tf32_matmuls`), on whatever device they run. Forward, backward and double backward
    alike: the mode sees the kernels below autograd."""

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        rounded: tuple[int, ...] = ()
        if func in _CONVOLUTIONS and tf32_convolutions():
            rounded = _CONVOLUTIONS[func]
        elif func in _MATMULS and tf32_matmuls():
            rounded = _MATMULS[func]
        if rounded:
            args = tuple(
                round_to_tf32(a) if i in rounded and isinstance(a, Tensor) else a
                for i, a in enumerate(args)
            )
        return func(*args, **(kwargs or {}))


def emulating_tf32() -> bool:
    """Whether an `EmulatedTF32` mode is on: float32 convolutions here run as TF32 would."""
    return any(isinstance(mode, EmulatedTF32) for mode in _get_current_dispatch_mode_stack())
