"""The preflight: one config tried end to end before a sweep's first trial; its report, and
each stage's failure with the entry point, the stage and the user's own words."""

from __future__ import annotations

import json
import pickle
import sys

import pytest
import torch

from gradreg.config import TrainConfig
from gradreg.models import build_model
from gradreg.preflight import STAGES, PreflightError, describe, preflight
from gradreg.user_code import code_path
from tests.helpers.user_code import BUILD, BUILD_BATCHNORM, LOAD, write_user_code
from tests.helpers.user_code import user_config as config

BAD = """
import numpy as np
import torch
from torch import nn


def wrong_shape(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(16, n_classes + 1))


def tuple_out(input_shape, n_classes):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(16, n_classes)

        def forward(self, x):
            return self.linear(x.flatten(1)), x

    return Two()


def breaks_in_forward(input_shape, n_classes):
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(15, n_classes)

        def forward(self, x):
            hidden = x.flatten(1)
            return self.linear(hidden)

    return Broken()


def integer_logits(input_shape, n_classes):
    class Counts(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(16, n_classes)

        def forward(self, x):
            return self.linear(x.flatten(1)).round().long()

    return Counts()


def frozen(input_shape, n_classes):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, n_classes))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def lengths(n=40):
    x = np.zeros((n, 1, 16), dtype=np.float32)
    y = np.arange(n) % 3
    return {"train": (x, y[:-2]), "test": (x[:9], y[:9])}
"""

NEEDS = "import numpy\nimport einops_missing_dependency\n\n\ndef build(input_shape, n_classes):\n"
NEEDS += "    pass\n"


@pytest.fixture
def code(tmp_path):
    directory = write_user_code(
        tmp_path / "src", **{"tnets/bad.py": BAD, "tnets/needs.py": NEEDS, "tdata/bad.py": BAD}
    )
    with code_path(directory):
        yield directory


# ---------------------------------------------------------------- the report


def test_the_report_of_a_users_network(code, tmp_path):
    generator_state = torch.random.get_rng_state()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    report = preflight(config())
    assert torch.equal(torch.random.get_rng_state(), generator_state)  # the caller's RNG
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no file
    assert (report.model, report.dataset, report.entry_points) == (BUILD, LOAD, (BUILD, LOAD))
    assert (report.method, report.fisher, report.device) == ("vl-uniform", "sampled", "cpu")
    assert (report.n_train, report.n_val, report.n_test) == (61, 11, 24)
    assert report.input_shape == (1, 16) and report.n_classes == 3
    model = build_model(BUILD, (1, 16), 3, width=8)
    n_parameters = sum(p.numel() for p in model.parameters())
    assert report.n_parameters == n_parameters
    assert report.step_memory_bytes == sum(report.memory.values())
    assert report.step_memory_bytes > 4 * n_parameters
    # VL-uniform with σ fixed trains μ (its σ is a buffer): gradients and Adam's moments of μ
    assert report.memory["parameters"] == 4 * (n_parameters + 1)
    assert report.memory["gradients"] == 4 * n_parameters
    assert report.memory["optimiser_state"] >= 2 * 4 * n_parameters
    assert report.memory["batch"] == 32 * 16 * 4 + 32 * 8
    assert report.memory["saved_tensors"] > 0
    assert list(report.seconds) == list(STAGES) and all(s >= 0 for s in report.seconds.values())
    assert report.notes == ()
    assert json.loads(json.dumps(report.to_dict()))["input_shape"] == [1, 16]
    assert "preflight passed: tnets.mixer:build on tdata.waves:load (vl-uniform, cpu)" in (
        describe(report)
    )


def test_the_saved_tensors_grow_with_the_batch(code):
    small = preflight(config(batch_size=8)).memory
    large = preflight(config(batch_size=48)).memory
    assert large["batch"] == 6 * small["batch"]
    assert large["saved_tensors"] > 4 * small["saved_tensors"]
    assert large["parameters"] == small["parameters"]


def test_a_builtin_model_and_dataset(code):
    report = preflight(TrainConfig(dataset="iris", method="map", batch_size=16, device="cpu"))
    assert report.entry_points == () and report.n_classes == 3 and report.input_shape == (4,)
    assert report.n_parameters == sum(p.numel() for p in build_model("mlp", (4,), 3).parameters())


# ---------------------------------------------------------------- the layers


def test_per_example_is_refused_naming_the_layer_norms(code):
    with pytest.raises(PreflightError) as error:
        preflight(config(variance=None, noise_scale=None, fisher="per_example"))
    assert (error.value.stage, error.value.kind, error.value.entry_point) == (
        "layers",
        "config",
        BUILD,
    )
    assert str(error.value) == (
        "preflight failed at stage 'layers': model builder 'tnets.mixer:build': method "
        "'vl-diagonal' with fisher 'per_example' cannot train this network: layer 'block.norm' "
        "(LayerNorm) has parameters but no per-example rule. Set fisher to 'sampled', which "
        "works for any architecture"
    )


def test_batch_norm_rules_out_per_example_and_sampled_works(code):
    with pytest.raises(PreflightError) as error:
        preflight(config(model=BUILD_BATCHNORM, model_options={}, fisher="per_example"))
    assert error.value.stage == "layers"
    assert (
        "layer '1' (BatchNorm1d) normalises with batch statistics, which couple the examples, "
        "so per-example gradients do not exist. Set fisher to 'sampled'"
    ) in str(error.value)
    assert preflight(config(model=BUILD_BATCHNORM, model_options={})).notes == ()


def test_a_slow_exact_fisher_is_a_note(code):
    report = preflight(config(method="laplace", variance=None, noise_scale=None))
    assert report.fisher == "exact"
    assert report.notes == (
        "fisher 'exact' has no per-layer rule for this network (layer 'block.norm' (LayerNorm) "
        "has parameters but no per-example rule): it takes one backward pass per example and "
        "class, so it is slow; fisher 'sampled' takes one per batch",
    )


def test_a_builtin_models_refusal_names_the_model(code):
    settings = {"model": "resnet20", "model_options": {"width": 4}, "dataset": "digits"}
    with pytest.raises(PreflightError) as error:
        preflight(TrainConfig(**settings, fisher="per_example", batch_size=8, device="cpu"))
    assert error.value.entry_point is None and error.value.stage == "layers"
    assert str(error.value).startswith(
        "preflight failed at stage 'layers': model 'resnet20': method 'vl-diagonal' with fisher "
        "'per_example' cannot train this network: layers '1', '3.bn1', '3.bn2', '4.bn1', "
        "'4.bn2', and 16 more (BatchNorm2d) normalise with batch statistics"
    )


# ---------------------------------------------------------------- each stage's failure


@pytest.mark.parametrize(
    ("changes", "stage", "kind", "message"),
    [
        (
            {"model": "tnets.needs:build"},
            "import",
            "import",
            "preflight failed at stage 'import': model builder 'tnets.needs:build': importing "
            "module 'tnets.needs' failed: it imports module 'einops_missing_dependency', which "
            "is not installed where the code runs: ModuleNotFoundError: No module named "
            "'einops_missing_dependency'\n  File \"{code}/tnets/needs.py\", line 2, in <module>"
            "\n    import einops_missing_dependency",
        ),
        (
            {"model": "tnets.mixer:biuld"},
            "import",
            "attribute",
            "preflight failed at stage 'import': model builder 'tnets.mixer:biuld': module "
            "'tnets.mixer' ({code}/tnets/mixer.py) has no attribute 'biuld'; did you mean "
            "'build'? it defines: Block, Mixer, build, build_batchnorm",
        ),
        (
            {"dataset": "tdata.absent:load"},
            "import",
            "not_found",
            "preflight failed at stage 'import': data loader 'tdata.absent:load': package "
            "'tdata' ({code}/tdata/__init__.py) has no module 'absent'",
        ),
        (
            {"dataset": "tdata.bad:lengths", "dataset_options": {}},
            "data",
            "result",
            "preflight failed at stage 'data': data loader 'tdata.bad:lengths': split 'train': x "
            "holds 40 examples but y holds 38 labels; give one label per example",
        ),
        (
            {"dataset_options": {"n": 96, "seed": 1}, "test_fraction": 0.3},
            "data",
            "config",
            "preflight failed at stage 'data': data loader 'tdata.waves:load': ValueError: data "
            "loader 'tdata.waves:load' returns its own test split, which is used as the test "
            "set; leave test_fraction unset (got 0.3)",
        ),
        (
            {"model_options": {"width": 8, "patch": 5}},
            "model",
            "call",
            "preflight failed at stage 'model': model builder 'tnets.mixer:build': raised: "
            "ValueError: length 16 is not a multiple of patch=5\n  File "
            '"{code}/tnets/mixer.py", line {line}, in build\n    raise ValueError(f"length '
            '{{length}} is not a multiple of patch={{patch}}")',
        ),
        (
            {"model": "tnets.bad:wrong_shape", "model_options": {}},
            "forward",
            "result",
            "preflight failed at stage 'forward': model builder 'tnets.bad:wrong_shape': the "
            "network's forward pass on a batch of shape (32, 1, 16) gives logits of shape "
            "(32, 4); expected (32, 3): (batch, n_classes)",
        ),
        (
            {"model": "tnets.bad:tuple_out", "model_options": {}},
            "forward",
            "result",
            "preflight failed at stage 'forward': model builder 'tnets.bad:tuple_out': the "
            "network's forward pass on a batch of shape (32, 1, 16) returned tuple, not a "
            "tensor of logits (B, n_classes)",
        ),
        (
            {"model": "tnets.bad:integer_logits", "model_options": {}},
            "forward",
            "result",
            "preflight failed at stage 'forward': model builder 'tnets.bad:integer_logits': the "
            "network's logits have dtype torch.int64; they must be floating",
        ),
        (
            {"model": "tnets.bad:frozen", "model_options": {}},
            "step",
            "call",
            "preflight failed at stage 'step': model builder 'tnets.bad:frozen': raised: "
            "ValueError: Sequential has no trainable parameters: a posterior over the weights "
            "needs at least one parameter with requires_grad=True",
        ),
    ],
)
def test_each_stage_fails_naming_itself_and_the_code(code, changes, stage, kind, message):
    with pytest.raises(PreflightError) as error:
        preflight(config(**changes))
    lines = (code / "tnets" / "mixer.py").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "is not a multiple of patch" in text)
    assert str(error.value) == message.format(code=code, line=line)
    assert (error.value.stage, error.value.kind) == (stage, kind)


def test_an_exception_in_the_users_forward_is_quoted_with_its_frames(code):
    with pytest.raises(PreflightError) as error:
        preflight(config(model="tnets.bad:breaks_in_forward", model_options={}))
    assert (error.value.stage, error.value.kind) == ("forward", "call")
    assert error.value.problem.startswith(
        "raised: RuntimeError: mat1 and mat2 shapes cannot be multiplied (32x16 and 15x3)"
    )
    assert "in forward\n    return self.linear(hidden)" in error.value.frames[0]
    assert all("gradreg" not in frame for frame in error.value.frames)


def test_a_preflight_error_pickles_with_its_stage(code):
    with pytest.raises(PreflightError) as error:
        preflight(config(model="tnets.bad:wrong_shape", model_options={}))
    copy = pickle.loads(pickle.dumps(error.value))
    assert type(copy) is PreflightError and copy.stage == "forward"
    assert str(copy) == str(error.value)


def test_the_preflight_writes_no_bytecode_into_the_code(tmp_path, monkeypatch):
    directory = write_user_code(tmp_path / "src")
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    sys.path.insert(0, str(directory))  # on the path as a runtime environment puts it
    try:
        preflight(config())
    finally:
        sys.path.remove(str(directory))
        for name in [m for m in sys.modules if m.split(".")[0] in ("tnets", "tdata")]:
            del sys.modules[name]
    assert not list(directory.rglob("__pycache__"))
    assert sys.dont_write_bytecode is False  # as it was
