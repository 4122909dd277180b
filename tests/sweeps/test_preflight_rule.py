"""Which settings a sweep's preflight tries (`sweeps.preflight.preflight_values`), when it runs
one, and the small rules around a code bundle that need no Ray: absolute tracking URIs, a
trial's code paths."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from sweeps import parse_spec
from sweeps.code import bundle_code_paths
from sweeps.preflight import needs_preflight, preflight_values, representative
from sweeps.settings import absolute_tracking_uri
from sweeps.spec import CategoricalParameter, FloatParameter, IntParameter
from sweeps.spec.limits import Limits


def spec_of(**changes: Any) -> Any:
    document: dict[str, Any] = {
        "name": "rule",
        "dataset": {"entry_point": "tdata.waves:load"},
        "model": {"entry_point": "tnets.mixer:build"},
        "method": "vl-uniform",
        "fixed": {"epochs": 2},
        "parameters": {"noise_scale": {"type": "float", "low": 0.001, "high": 0.1, "scale": "log"}},
    }
    document.update(changes)
    return parse_spec(document, Limits())


def test_each_searched_parameter_at_a_representative_value_and_batch_size_at_its_largest() -> None:
    spec = spec_of(
        parameters={
            "noise_scale": {"type": "float", "low": 0.001, "high": 0.1, "scale": "log"},
            "lr": {"type": "float", "low": 0.01, "high": 0.03},
            "batch_size": {"type": "int", "low": 16, "high": 100, "step": 16},
            "prior_variance": {"type": "categorical", "choices": [1.0, 10.0]},
        }
    )
    [values] = preflight_values(spec)
    assert math.isclose(values["noise_scale"], 0.01)
    assert math.isclose(values["lr"], 0.02)
    assert values["batch_size"] == 96  # the largest on its step
    assert values["prior_variance"] == 1.0


def test_once_per_method_and_per_fisher_that_a_method_reads() -> None:
    spec = spec_of(
        method=None,
        parameters={
            "method": {"type": "categorical", "choices": ["vl-uniform", "map"]},
            "noise_scale": {"type": "float", "low": 0.001, "high": 0.1, "scale": "log"},
            "fisher": {"type": "categorical", "choices": ["sampled", "per_example"]},
            "batch_size": {"type": "categorical", "choices": [32, 128, 64]},
        },
    )
    tried = preflight_values(spec)
    # MAP reads no Fisher: once; VL once per estimator.
    assert [(v["method"], v.get("fisher")) for v in tried] == [
        ("vl-uniform", "sampled"),
        ("vl-uniform", "per_example"),
        ("map", None),
    ]
    assert {v["batch_size"] for v in tried} == {128}


def test_a_sweep_without_searched_parameters_is_tried_once_with_its_fixed_settings() -> None:
    assert preflight_values(spec_of(parameters={}, fixed={"epochs": 2, "noise_scale": 0.01})) == [
        {}
    ]


@pytest.mark.parametrize(
    ("parameter", "expected"),
    [
        (IntParameter(type="int", low=1, high=100, scale="log"), 10),
        (IntParameter(type="int", low=2, high=9, step=3), 5),
        (FloatParameter(type="float", low=0.0, high=1.0, step=0.3), 0.6),
        (CategoricalParameter(type="categorical", choices=["a", "b"]), "a"),
    ],
)
def test_representative_values(parameter: Any, expected: Any) -> None:
    assert representative("x", parameter) == pytest.approx(expected)


def test_only_sweeps_that_run_user_code_need_a_preflight() -> None:
    assert needs_preflight(spec_of())
    assert needs_preflight(spec_of(dataset={"name": "iris"}))  # the builder is the user's
    builtin = spec_of(dataset={"name": "iris"}, model={"name": "mlp"})
    assert not needs_preflight(builtin)
    assert needs_preflight(
        spec_of(
            dataset={"name": "iris"},
            model={"name": "mlp"},
            code={"requirements": ["einops==0.8.2"]},
        )
    )


def test_tracking_uris_with_relative_local_paths_become_absolute(tmp_path: Path) -> None:
    here = os.getcwd()
    assert absolute_tracking_uri("sqlite:///m.db") == f"sqlite:///{here}/m.db"
    assert absolute_tracking_uri("sqlite:///a/../m.db") == f"sqlite:///{here}/m.db"
    assert absolute_tracking_uri(f"sqlite:///{tmp_path}/m.db") == f"sqlite:///{tmp_path}/m.db"
    assert absolute_tracking_uri("mlruns") == f"{here}/mlruns"
    for unchanged in (
        "http://127.0.0.1:5000",
        "file:///x/mlruns",
        "databricks",
        "sqlite:///:memory:",
    ):
        assert absolute_tracking_uri(unchanged) == unchanged


def test_a_trial_s_code_paths_are_its_working_directory_s_top_level_modules(
    tmp_path: Path,
) -> None:
    (tmp_path / "mynets").mkdir()
    (tmp_path / "mynets" / "__init__.py").write_text("")
    (tmp_path / "helpers.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "__pycache__").mkdir()
    paths = bundle_code_paths(tmp_path, ["mynets.mixer:build"], "sha256:x")
    assert paths == [str(tmp_path / "helpers.py"), str(tmp_path / "mynets")]
    with pytest.raises(RuntimeError, match=r"does not provide 'mydata' \(of mydata.signals:load\)"):
        bundle_code_paths(tmp_path, ["mynets.mixer:build", "mydata.signals:load"], "sha256:x")
