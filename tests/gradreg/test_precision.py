"""TF32: torch's flags read, set for a while and put back; its rounding emulated on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradreg.curvature.finite_difference import TF32_EPSILON, Variant, forward_epsilon
from gradreg.curvature.precision import (
    EmulatedTF32,
    emulating_tf32,
    round_to_tf32,
    tf32,
    tf32_convolutions,
    tf32_matmuls,
    tf32_setting,
)
from gradreg.models import build_model


def flags() -> tuple:
    """Everything a TF32 context may touch, as set (the legacy flags where they can be read)."""
    cudnn = torch.backends.cudnn
    raw = (
        cudnn.conv.fp32_precision,
        cudnn.rnn.fp32_precision,
        cudnn.fp32_precision,
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.fp32_precision,
    )
    try:
        legacy = (cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError:  # the newer settings were set apart from the legacy flags
        legacy = None
    return raw, legacy, tf32_convolutions(), tf32_matmuls()


@pytest.fixture
def restore_flags():
    """The test may set torch's flags itself: put them back as they were."""
    cudnn = torch.backends.cudnn
    legacy = (cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    raw = flags()[0]
    yield
    cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = legacy
    torch.backends.fp32_precision = raw[4]
    cudnn.fp32_precision = raw[2]
    cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = raw[0], raw[1]
    torch.backends.cuda.matmul.fp32_precision = raw[3]
    assert flags()[0] == raw


def set_apart() -> None:
    """A user who set the newer settings only, so that the legacy flags now raise."""
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "tf32"


def set_legacy_off() -> None:
    torch.backends.cudnn.allow_tf32 = False


@pytest.mark.parametrize("start", [None, set_legacy_off, set_apart])
def test_tf32_sets_both_ways_and_puts_every_flag_back(restore_flags, start):
    if start is not None:
        start()
    before = flags()
    for enabled in (False, True):
        with tf32(enabled):
            assert (tf32_convolutions(), tf32_matmuls()) == (enabled, enabled)
            inside = flags()
        assert flags() == before
        if before[1] is not None:  # the legacy flags stay readable inside, for torch.compile
            assert inside[1] == (enabled, enabled)
    with pytest.raises(KeyError), tf32(False):
        raise KeyError("a failing step")
    assert flags() == before


def test_the_defaults_are_tf32_convolutions_and_float32_matmuls():
    assert tf32_convolutions() and not tf32_matmuls()  # torch's own defaults


def test_a_runs_tf32_setting_chooses_and_restores(restore_flags):
    before = flags()
    with tf32_setting("default"):
        assert flags() == before
    with tf32_setting("off"):
        assert not tf32_convolutions() and not tf32_matmuls()
    with tf32_setting("on"):
        assert tf32_convolutions() and tf32_matmuls()
    assert flags() == before
    with pytest.raises(ValueError, match="unknown tf32 'yes'; accepted: default, on, off"):
        tf32_setting("yes")


def test_rounding_keeps_ten_bits_to_nearest_ties_away_from_zero():
    one = 1.0
    values = torch.tensor(
        [one, one + 2**-11, one + 2**-12, one + 3 * 2**-11, -(one + 2**-11), 3.0e38, 1e-40]
    )
    expected = [one, one + 2**-10, one, one + 2**-9, -(one + 2**-10), 2.9999e38, 1e-40]
    rounded = round_to_tf32(values)
    assert rounded[:5].tolist() == expected[:5]
    assert rounded[5] == pytest.approx(expected[5], rel=2**-10)
    special = torch.tensor([float("inf"), float("-inf"), float("nan")])
    assert round_to_tf32(special)[:2].tolist() == [float("inf"), float("-inf")]
    assert torch.isnan(round_to_tf32(special)[2])
    x = torch.randn(10_000) * 10.0 ** torch.randint(-20, 20, (10_000,))
    r = round_to_tf32(x)
    assert not (r.view(torch.int32) & 0x1FFF).any()  # 13 low bits of the mantissa are gone
    assert ((r - x).abs() <= x.abs() * 2**-11).all()
    doubles = torch.randn(5, dtype=torch.float64)
    assert torch.equal(round_to_tf32(doubles), doubles)


def test_emulation_rounds_convolutions_forward_and_backward_as_the_flags_say(restore_flags):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    out_grad = torch.randn(2, 4, 4, 4)
    assert not emulating_tf32()
    with EmulatedTF32():
        assert emulating_tf32()
        y = F.conv2d(x, w)
        gx, gw = torch.autograd.grad(y, (x, w), out_grad)
        with tf32(False):
            y_ieee = F.conv2d(x, w)
    assert not emulating_tf32()
    rx, rw, rg = round_to_tf32(x.detach()), round_to_tf32(w.detach()), round_to_tf32(out_grad)
    assert torch.equal(y, F.conv2d(rx, rw))
    assert not torch.equal(y, F.conv2d(x, w))
    assert torch.equal(y_ieee, F.conv2d(x, w))  # TF32 off inside: float32 proper
    expected = torch.ops.aten.convolution_backward(
        rg, rx, rw, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, False]
    )
    assert torch.equal(gx, expected[0]) and torch.equal(gw, expected[1])
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    with EmulatedTF32():
        plain = a @ b  # matrix products stay float32 unless the flags allow TF32
        with tf32(True):
            rounded = a @ b
    assert torch.equal(plain, a @ b)
    assert torch.equal(rounded, round_to_tf32(a) @ round_to_tf32(b))


def test_forward_epsilon_sees_emulated_tf32_unless_the_passes_turn_it_off():
    model = build_model("cnn", (1, 8, 8), 3)
    params = list(model.parameters())
    assert forward_epsilon(model, params) == 2**-23
    with EmulatedTF32():
        assert forward_epsilon(model, params) == TF32_EPSILON
        with Variant().passes():  # the finite difference's default: true float32
            assert forward_epsilon(model, params) == 2**-23
        with Variant(precision="flags").passes():
            assert forward_epsilon(model, params) == TF32_EPSILON
        mlp = build_model("mlp", (12,), 3)  # no convolutions, float32 matrix products
        assert forward_epsilon(mlp, list(mlp.parameters())) == 2**-23
