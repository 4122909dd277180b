"""docker/smoke.sh's sweep: the service would accept it (the smoke itself needs a GPU host)."""

from __future__ import annotations

import importlib.util

import yaml

from sweeps import parse_spec
from sweeps.settings import SweepSettings
from sweeps.spec.checks import Limits, semantic_issues
from tests.helpers.deploy import ROOT


def _smoke_module():
    spec = importlib.util.spec_from_file_location("smoke_sweep", ROOT / "docker/smoke_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smoke_sweep_is_a_valid_two_trial_gpu_sweep(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("GRADREG_DATA_DIR", str(tmp_path))
    smoke = _smoke_module()
    example = yaml.safe_load((ROOT / "sweeps/examples/cifar10-resnet18-gpu.yaml").read_text())
    limits = Limits.from_settings(SweepSettings())
    spec = parse_spec(smoke.smoke_spec(example, "smoke-gpu-1"), limits)
    assert not list(semantic_issues(spec, limits))
    assert spec.budget.max_trials == smoke.TRIALS and spec.resources.gpu > 0
    assert spec.dataset.name == "cifar10" and spec.fixed["epochs"] == 1
