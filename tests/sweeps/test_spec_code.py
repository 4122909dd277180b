"""The spec's user code (issue 25): model and dataset by entry point, the code section and its
requirements, and what a trial's TrainConfig gets from them. Nothing here imports user code."""

from __future__ import annotations

import pickle
import sys
from typing import Any

import pytest

from sweeps import SpecError, parse_spec
from sweeps.spec import ModelSection, SweepSpec
from sweeps.spec.checks import requirement_problem
from sweeps.spec.limits import Limits
from sweeps.spec.resolve import trial_config

BUILD = "mynets.mixer:build"
LOAD = "mydata.signals:load"


def document(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "own",
        "dataset": {"entry_point": LOAD, "options": {"noise": 0.3}},
        "model": {"entry_point": BUILD, "options": {"width": 16}},
        "method": "vl-uniform",
        "fixed": {"epochs": 2, "noise_scale": 0.01},
    }
    base.update(changes)
    return base


def issues(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(doc, Limits())
    return {issue.path: issue.message for issue in caught.value.issues}


def test_entry_points_pass_the_door_without_importing_the_code() -> None:
    spec = parse_spec(document(), Limits())
    assert (spec.model.entry_point, spec.model.name) == (BUILD, None)
    assert (spec.dataset.entry_point, spec.dataset.name) == (LOAD, None)
    assert "mynets" not in sys.modules and "mydata" not in sys.modules
    config = trial_config(spec, {})
    assert (config.model, config.model_options) == (BUILD, {"width": 16})
    assert (config.dataset, config.dataset_options) == (LOAD, {"noise": 0.3})


def test_a_user_s_options_are_any_json_values_and_unchecked() -> None:
    options = {"widths": [16, 32.5], "block": {"kind": "mixer", "norm": None}, "anything": 1}
    spec = parse_spec(
        document(
            model={"entry_point": BUILD, "options": options},
            dataset={"entry_point": LOAD, "options": {"shapes": ["sine", "square"]}},
        ),
        Limits(),
    )
    config = trial_config(spec, {})
    assert config.model_options == options
    assert config.dataset_options == {"shapes": ["sine", "square"]}


@pytest.mark.parametrize("section", ["model", "dataset"])
def test_name_and_entry_point_exclude_each_other_naming_both(section: str) -> None:
    name = "mlp" if section == "model" else "digits"
    value = BUILD if section == "model" else LOAD
    found = issues(document(**{section: {"name": name, "entry_point": value}}))
    assert list(found) == [section]
    assert f"{section}.name and {section}.entry_point exclude each other" in found[section]


def test_a_model_with_neither_keeps_the_default_mlp_a_dataset_needs_one() -> None:
    spec = parse_spec(document(model={}, dataset={"name": "iris"}), Limits())
    assert spec.model.name == "mlp" and spec.model.entry_point is None
    assert trial_config(spec, {}).model == "mlp"
    found = issues(document(dataset={"options": {}}))
    assert "give dataset.name" in found["dataset"] and "dataset.entry_point" in found["dataset"]


def test_a_spec_without_model_section_round_trips_with_the_default() -> None:
    without_model = {k: v for k, v in document(dataset={"name": "iris"}).items() if k != "model"}
    spec = parse_spec(without_model, Limits())
    again = parse_spec(spec.to_document(), Limits())
    assert again == spec and again.model.identifier == "mlp"


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("model", "mynets.mixer", "holds 0 colons"),
        ("model", "mynets.mixer:", "names no function"),
        ("dataset", "my-data.signals:load", "is not a Python identifier"),
        ("dataset", "a:b:c", "holds 2 colons"),
    ],
)
def test_an_entry_point_s_syntax_is_checked_at_the_door(
    section: str, value: str, message: str
) -> None:
    found = issues(document(**{section: {"entry_point": value}}))
    assert message in found[f"{section}.entry_point"]


def test_a_builtin_keeps_its_option_checks_an_entry_point_does_not() -> None:
    found = issues(document(model={"name": "mlp", "options": {"width": 3, "hidden": [[4]]}}))
    assert "takes numbers, strings, booleans or lists of integers" in found["model.options.hidden"]
    found = issues(document(dataset={"name": "moons", "options": {"noise": [0.1]}}))
    assert "takes numbers, strings or booleans" in found["dataset.options.noise"]
    # The same option names on the user's code are theirs: no "unknown option".
    parse_spec(document(model={"entry_point": BUILD, "options": {"width": 3}}), Limits())


def test_a_loader_takes_no_data_dir() -> None:
    found = issues(document(dataset={"entry_point": LOAD, "data_dir": "sets"}))
    assert "a loader reads its own data" in found["dataset.data_dir"]


def test_code_section_digest_pattern_and_requirements() -> None:
    digest = "sha256:" + "0" * 64
    spec = parse_spec(
        document(code={"digest": digest, "requirements": ["einops==0.8.2", "numpy>=1.24"]}),
        Limits(),
    )
    assert spec.code.digest == digest
    assert spec.code.requirements == ["einops==0.8.2", "numpy>=1.24"]
    found = issues(document(code={"digest": "sha256:abc"}))
    assert "code.digest" in found


@pytest.mark.parametrize(
    ("requirement", "message"),
    [
        ("--index-url https://evil.example/simple", "is a pip option"),
        ("-e git+https://example.com/x.git", "is a pip option"),
        ("einops @ https://example.com/einops.whl", "names a URL"),
        ("einops===", "is not a PEP 508 requirement"),
        ("wheels/tiny-1.0-py3-none-any.whl", "absolute path"),
        ("/srv/pkgs/tiny-1.0.tar.gz", "must be a wheel"),
    ],
)
def test_a_requirement_the_trials_may_not_install_is_refused(
    requirement: str, message: str
) -> None:
    found = issues(document(code={"requirements": ["einops==0.8.2", requirement]}))
    assert list(found) == ["code.requirements.1"]
    assert message in found["code.requirements.1"]


@pytest.mark.parametrize(
    "requirement",
    [
        "einops==0.8.2",
        "numpy>=1.24,<3",
        "torchvision; python_version >= '3.10'",
        "/srv/wheels/tiny-1.0-py3-none-any.whl",
        "extra[one,two]~=1.2",
    ],
)
def test_requirements_that_pass(requirement: str) -> None:
    assert requirement_problem(requirement) is None


def test_a_section_pickled_before_its_new_fields_existed_takes_their_defaults() -> None:
    # Tune pickles the spec's models into a sweep's saved state; a sweep saved before
    # entry_point and code existed resumes with their defaults.
    spec = SweepSpec.model_validate({"name": "old", "dataset": {"name": "iris"}})
    state = spec.__getstate__()
    state["__dict__"] = {k: v for k, v in state["__dict__"].items() if k != "code"}
    model_state = spec.model.__getstate__()
    model_state["__dict__"] = {
        k: v for k, v in model_state["__dict__"].items() if k != "entry_point"
    }
    old = SweepSpec.__new__(SweepSpec)
    old.__setstate__(state)
    model = ModelSection.__new__(ModelSection)
    model.__setstate__(model_state)
    assert old.code.requirements == [] and old.code.digest is None
    assert model.entry_point is None and model.identifier == "mlp"
    assert pickle.loads(pickle.dumps(old)) == old
