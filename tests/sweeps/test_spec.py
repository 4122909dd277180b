"""Sweep specs: the examples, the JSON Schema, round trips and every kind of bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from sweeps import (
    Limits,
    SpecError,
    SweepSpec,
    dump_spec,
    load_spec_file,
    parse_spec,
    parse_spec_text,
)
from tests.helpers.specs import DIGITS_SWEEP

EXAMPLES = sorted(Path("sweeps/examples").glob("*.yaml"))
SCHEMA_FILE = Path("sweeps/spec/schema.json")


def issues_of(document: dict, limits: Limits | None = None) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(document, limits or Limits())
    found: dict[str, str] = {}
    for issue in caught.value.issues:
        found[issue.path] = " | ".join(filter(None, [found.get(issue.path), issue.message]))
    return found


def with_changes(**changes) -> dict:
    return {**copy.deepcopy(DIGITS_SWEEP), **changes}


def test_the_four_examples_are_valid():
    names = {load_spec_file(path).name for path in EXAMPLES}
    assert names == {
        "digits-vl-uniform",
        "digits-method-comparison",
        "mnist1d-vl-diagonal",
        "cifar10-resnet18-vl-uniform",
    }
    gpu = load_spec_file("sweeps/examples/cifar10-resnet18-gpu.yaml")
    assert 0 < gpu.resources.gpu < 1  # several trials share one GPU
    comparison = load_spec_file("sweeps/examples/digits-method-comparison.yaml")
    assert comparison.method is None and len(comparison.methods) == 5
    assert comparison.multi_objective


def test_committed_json_schema_matches_the_model():
    assert json.loads(SCHEMA_FILE.read_text()) == SweepSpec.model_json_schema()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_specs_round_trip_through_yaml_and_json(path):
    spec = load_spec_file(path)
    assert parse_spec_text(dump_spec(spec, "yaml")) == spec
    assert parse_spec_text(dump_spec(spec, "json")) == spec
    assert json.loads(dump_spec(spec, "json")) == spec.to_document()


def test_defaults_fill_the_optional_sections():
    spec = parse_spec({"name": "minimal", "dataset": {"name": "iris"}, "method": "map"}, Limits())
    assert spec.model.name == "mlp"
    assert [(o.metric, o.goal) for o in spec.objectives] == [("val_nll", "minimize")]
    assert spec.search.algorithm == "tpe"
    assert spec.early_stopping.kind == "none"
    assert spec.budget.max_concurrent_trials == 1
    assert spec.experiment == "minimal"


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        # shapes and types
        ({"name": "Has Spaces"}, "name", "pattern"),
        ({"colour": "red"}, "colour", "unknown field"),
        ({"dataset": {"name": "digits", "split_seed": "0"}}, "dataset.split_seed", "integer"),
        ({"budget": {"max_trials": 0}}, "budget.max_trials", "greater than or equal to 1"),
        (
            {"parameters": {"lr": {"type": "float", "low": "0.1", "high": 1.0}}},
            "parameters.lr.float.low",
            "number",
        ),
        ({"search": {"algorithm": "bayes"}}, "search.algorithm", "'tpe', 'gp', 'cmaes'"),
        ({"method": "sgld"}, "method", "'vl-uniform', 'vl-diagonal', 'map', 'mcvi'"),
        # names gradreg does not know
        ({"dataset": {"name": "imagenet"}}, "dataset.name", "accepted: digits"),
        ({"model": {"name": "vgg"}}, "model.name", "accepted: mlp, cnn, resnet18"),
        (
            {"model": {"name": "mlp", "options": {"depth": 3}}},
            "model.options.depth",
            "accepted: hidden=(128, 128), activation='relu'",
        ),
        (
            {"dataset": {"name": "moons", "options": {"seed": 1}}},
            "dataset.options.seed",
            "accepted: n_samples, noise, data_seed",
        ),
        ({"dataset": {"name": "digits", "data_dir": "x"}}, "dataset.data_dir", "reads no files"),
        # ranges
        (
            {"parameters": {"noise_scale": {"type": "float", "low": 0.1, "high": 0.01}}},
            "parameters.noise_scale.high",
            "must be > low",
        ),
        (
            {"parameters": {"noise_scale": {"type": "float", "low": 0, "high": 1, "scale": "log"}}},
            "parameters.noise_scale.low",
            "log scale needs low > 0",
        ),
        (
            {
                "fixed": {"noise_scale": 0.01},
                "parameters": {"epochs": {"type": "float", "low": 1, "high": 5}},
            },
            "parameters.epochs.type",
            "integer: use type int",
        ),
        (
            {"parameters": {"fisher": {"type": "categorical", "choices": ["sampled", "sampled"]}}},
            "parameters.fisher.choices",
            "distinct",
        ),
        # methods and the settings they use
        ({"method": "map"}, "parameters.noise_scale", "method 'map' does not use noise_scale"),
        (
            {"fixed": {"epochs": 2, "init_variance": 1e-4}},
            "fixed.init_variance",
            "method 'vl-uniform' does not use init_variance",
        ),
        ({"fixed": {"epochs": 2, "dataset": "iris"}}, "fixed.dataset", "set this as dataset.name"),
        ({"fixed": {"momentum": 0.9}}, "fixed.momentum", "unknown setting; accepted: prior"),
        ({"fixed": {"noise_scale": 0.1}}, "parameters.noise_scale", "both fixed and searched"),
        ({"fixed": {"fisher": "approximate"}}, "fixed.fisher", "unknown fisher 'approximate'"),
        ({"fixed": {"kl_weight": -1.0}}, "fixed.kl_weight", "kl_weight must be >= 0"),
        (
            {"parameters": {"prior_variance": {"type": "float", "low": 0.1, "high": 1.0}}},
            "fixed",
            "vl-uniform needs noise_scale",
        ),
        ({"method": None}, "method", "or search one as parameters.method"),
        (
            {
                "parameters": {
                    **DIGITS_SWEEP["parameters"],
                    "method": {"type": "categorical", "choices": ["map"]},
                }
            },
            "parameters.method",
            "method is fixed to 'vl-uniform'",
        ),
        (
            {
                "method": None,
                "parameters": {"method": {"type": "categorical", "choices": ["map", "sgd"]}},
            },
            "parameters.method.choices.1",
            "unknown method 'sgd'",
        ),
        # objectives and search
        ({"objectives": [{"metric": "test_nll"}]}, "objectives.0.metric", "leaks the test set"),
        (
            {"objectives": [{"metric": "val_nll"}, {"metric": "val_nll"}]},
            "objectives.1.metric",
            "once",
        ),
        (
            {
                "objectives": [{"metric": "val_nll"}, {"metric": "val_ece"}],
                "search": {"algorithm": "cmaes"},
            },
            "search.algorithm",
            "cmaes optimises one objective",
        ),
        ({"search": {"population_size": 8}}, "search.population_size", "only nsga2"),
        (
            {"search": {"initial_points": [{"noise_scale": 5.0}]}},
            "search.initial_points.0.noise_scale",
            "outside [0.001, 0.1]",
        ),
        (
            {"search": {"initial_points": [{"lr": 0.1}]}},
            "search.initial_points.0.lr",
            "not a searched parameter",
        ),
        # early stopping
        (
            {"early_stopping": {"kind": "asha", "max_t": 10}},
            "early_stopping.max_t",
            "exceeds a trial's epochs (2)",
        ),
        (
            {"early_stopping": {"kind": "asha", "grace_period": 5}},
            "early_stopping.grace_period",
            "exceeds max_t (2)",
        ),
        ({"early_stopping": {"max_t": 2}}, "early_stopping.max_t", "only used with kind: asha"),
        # settings that are valid alone but not together
        (
            {"fixed": {"epochs": 2, "fisher": "exact", "regulariser_grad": "finite_difference"}},
            "fixed",
            "regulariser_grad='finite_difference' needs fisher='sampled', not fisher='exact'",
        ),
        (
            {
                "fixed": {"epochs": 2, "regulariser_grad": "finite_difference"},
                "parameters": {
                    "noise_scale": {"type": "float", "low": 0.001, "high": 0.1},
                    "fisher": {"type": "categorical", "choices": ["sampled", "per_example"]},
                },
            },
            "parameters.fisher",
            "needs fisher='sampled', not fisher='per_example'",
        ),
        (
            {"fixed": {"epochs": 2, "compile": True}},
            "fixed.compile",
            "compile=true does not fit method 'vl-uniform'",
        ),
        # resources
        ({"resources": {"gpu": 1.5}}, "resources.gpu", "GPUs come whole"),
        (
            {"fixed": {"epochs": 2, "device": "cuda"}},
            "resources.gpu",
            "device 'cuda' needs resources.gpu > 0",
        ),
    ],
)
def test_bad_specs_name_the_field_and_what_is_accepted(changes, path, message):
    issues = issues_of(with_changes(**changes))
    assert path in issues, issues
    assert message in issues[path]


def test_budgets_must_fit_the_deployments_caps():
    limits = Limits(max_trials=10, max_concurrent_trials=2, max_time_budget_s=60, max_epochs=1)
    document = with_changes(
        budget={"max_trials": 11, "max_concurrent_trials": 3, "time_budget_s": 61}
    )
    issues = issues_of(document, limits)
    assert issues["budget.max_trials"] == "11 exceeds this deployment's cap of 10"
    assert "cap of 2" in issues["budget.max_concurrent_trials"]
    assert "cap of 60" in issues["budget.time_budget_s"]
    assert "cap of 1" in issues["fixed.epochs"]


def test_gp_is_refused_beyond_the_trials_where_its_suggestions_stall_the_driver():
    limits = Limits(max_trials=5000)
    search = {"algorithm": "gp", "seed": 0}
    issues = issues_of(with_changes(search=search, budget={"max_trials": 1001}), limits)
    assert "about 1 s per suggestion at 1,000 finished trials" in issues["search.algorithm"]
    assert "tpe or cmaes for more" in issues["search.algorithm"]
    parse_spec(with_changes(search=search, budget={"max_trials": 1000}), limits)
    tpe = {"algorithm": "tpe", "seed": 0}
    parse_spec(with_changes(search=tpe, budget={"max_trials": 5000}), limits)


def test_a_spec_without_a_time_budget_runs_under_the_cap_and_says_so():
    limits = Limits(max_time_budget_s=90)
    spec = parse_spec(with_changes(budget={"max_trials": 2}), limits)
    assert spec.budget.time_budget_s == 90
    assert spec.to_document()["budget"]["time_budget_s"] == 90  # what the store keeps
    assert parse_spec(with_changes(budget={"time_budget_s": 30}), limits).budget.time_budget_s == 30


def test_per_trial_resources_must_fit_the_deployments_caps():
    limits = Limits(max_trial_cpus=4, max_trial_gpus=1)
    issues = issues_of(with_changes(resources={"cpu": 1000, "gpu": 2}), limits)
    assert issues["resources.cpu"].startswith("1000 per trial exceeds this deployment's cap of 4")
    assert "GRADREG_MAX_TRIAL_GPUS" in issues["resources.gpu"]
    assert parse_spec(with_changes(resources={"cpu": 4}), limits).resources.cpu == 4


def test_limits_travel_as_a_document(tmp_path):
    limits = Limits(max_epochs=3, max_trial_cpus=2, data_root=tmp_path)
    assert Limits.from_document(limits.to_document()) == limits
    with pytest.raises(ValueError, match="unknown limits max_gpus"):
        Limits.from_document({"max_gpus": 1})


def test_data_dir_must_stay_inside_the_data_root(tmp_path):
    limits = Limits(data_root=tmp_path)
    inside = with_changes(
        dataset={"name": "cifar10", "data_dir": "sets/cifar"}, model={"name": "cnn"}
    )
    assert parse_spec(inside, limits).dataset.data_dir == "sets/cifar"
    for escape in ("../elsewhere", "/etc", "sets/../../up"):
        document = with_changes(dataset={"name": "cifar10", "data_dir": escape})
        assert "must lie inside the data root" in issues_of(document, limits)["dataset.data_dir"]


def test_a_section_problem_is_reported_once_at_its_field(tmp_path):
    """A data_dir outside the root, an unknown dataset or model: one problem, at the field,
    not repeated at every fixed and searched setting (each setting is probed with them)."""
    limits = Limits(data_root=tmp_path)
    outside = with_changes(
        dataset={"name": "cifar10", "data_dir": "../elsewhere"}, model={"name": "cnn"}
    )
    for document, path in (
        (outside, "dataset.data_dir"),
        (with_changes(dataset={"name": "imagenet"}), "dataset.name"),
        (with_changes(model={"name": "transformer"}), "model.name"),
    ):
        with pytest.raises(SpecError) as caught:
            parse_spec(document, limits)
        assert [issue.path for issue in caught.value.issues] == [path]
    # the settings are still checked beside a section's problem
    bad_lr = with_changes(
        dataset={"name": "cifar10", "data_dir": "../elsewhere"},
        fixed={**DIGITS_SWEEP["fixed"], "lr": -1.0},
    )
    assert set(issues_of(bad_lr, limits)) == {"dataset.data_dir", "fixed.lr"}


def test_an_unknown_dataset_model_or_option_is_named_with_what_is_accepted():
    names = issues_of(with_changes(dataset={"name": "imagenet"}, model={"name": "transformer"}))
    assert names["dataset.name"].startswith("unknown dataset 'imagenet'; accepted: digits, iris")
    assert names["model.name"].startswith("unknown model 'transformer'; accepted: mlp, cnn")
    options = issues_of(
        with_changes(
            dataset={"name": "digits", "options": {"data_dir": "x", "noise": 1}},
            model={"name": "mlp", "options": {"width": 3, "hidden": [4]}},
        )
    )
    assert options == {
        "dataset.options.data_dir": "give it as dataset.data_dir",
        "dataset.options.noise": "unknown option for dataset 'digits'; accepted: none",
        "model.options.width": (
            "unknown option for model 'mlp'; accepted: hidden=(128, 128), activation='relu'"
        ),
    }


def test_every_problem_is_reported_at_once():
    document = with_changes(
        dataset={"name": "imagenet"}, budget={"max_trials": 5000}, objectives=[{"metric": "nll"}]
    )
    assert set(issues_of(document)) >= {"dataset.name", "budget.max_trials", "objectives.0.metric"}


def test_text_that_is_not_a_mapping_or_not_yaml_is_refused():
    with pytest.raises(SpecError, match="a spec is a mapping, got list"):
        parse_spec_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="not valid YAML or JSON"):
        parse_spec_text("name: [unclosed\n")
    with pytest.raises(ValueError, match=r"must end in \.yaml, \.yml or \.json"):
        load_spec_file("spec.toml")


def test_objective_goal_defaults_by_metric():
    spec = parse_spec(
        with_changes(objectives=[{"metric": "val_accuracy"}, {"metric": "val_brier"}]), Limits()
    )
    assert [(o.goal, o.mode) for o in spec.objectives] == [("maximize", "max"), ("minimize", "min")]


def test_yaml_examples_are_plain_yaml():
    for path in EXAMPLES:
        assert isinstance(yaml.safe_load(path.read_text()), dict)


# ---------------------------------------------------------------- file datasets


@pytest.fixture
def file_root(tmp_path: Path) -> Path:
    """A data root holding a good table and a few bad files (and a table outside it)."""
    import numpy as np
    import pandas as pd

    root = tmp_path / "root"
    (root / "sets").mkdir(parents=True)
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {"a": rng.normal(size=60), "b": rng.normal(size=60), "label": ["ant", "bee", "cat"] * 20}
    )
    for place in (root / "animals.csv", root / "sets" / "animals.csv", tmp_path / "outside.csv"):
        table.to_csv(place, index=False)
    table.assign(b=[np.nan] + [0.0] * 59).to_csv(root / "nan.csv", index=False)
    x, y = rng.random((30, 4)), np.arange(30) % 2
    np.savez(root / "split.npz", x=x, y=y, x_test=x[:6], y_test=y[:6])
    np.savez(root / "gap.npz", x=x, y=y * 2)
    return root


@pytest.mark.parametrize(
    ("dataset", "path", "message"),
    [
        (
            {"options": {"path": "nowhere.csv"}},
            "dataset.options.path",
            "nowhere.csv does not exist",
        ),
        (
            {"options": {"path": "../outside.csv"}},
            "dataset.options.path",
            "dataset.options.path '../outside.csv' resolves outside the data root",
        ),
        ({"options": {}}, "dataset.options.path", "the file dataset needs option path"),
        (
            {"options": {"path": "animals.csv", "format": "xlsx"}},
            "dataset.options.format",
            "unknown format 'xlsx'; accepted: npz, csv, parquet, image_folder",
        ),
        (
            {"options": {"path": "animals.csv", "label": "species"}},
            "dataset.options.label",
            "has no column 'species'",
        ),
        (
            {"options": {"path": "animals.csv", "sep": ";"}},
            "dataset.options.sep",
            "unknown option for dataset 'file'; accepted: path, format, label",
        ),
        ({"options": {"path": "nan.csv"}}, "dataset.options.path", "values: 'b' (1)"),
        (
            {"options": {"path": "gap.npz"}},
            "dataset.options.path",
            "array 'y' has no example of 1 class(es) (1)",
        ),
        (
            {"options": {"path": "split.npz"}, "test_fraction": 0.2},
            "dataset.test_fraction",
            "holds x_test and y_test, its own test split, which is used as the test set",
        ),
        (
            {"options": {"path": "animals.csv"}, "val_fraction": 0.02},
            "dataset.val_fraction",
            "the val split would hold 1 of 60 examples, fewer than the 3 classes",
        ),
    ],
)
def test_a_file_dataset_is_opened_and_checked_at_submission(file_root, dataset, path, message):
    document = with_changes(dataset={"name": "file", **dataset})
    issues = issues_of(document, Limits(data_root=file_root))
    assert path in issues, issues
    assert message in issues[path]


def test_a_good_file_dataset_passes_and_its_trial_trains(file_root):
    from sweeps.spec.resolve import trial_config

    limits = Limits(data_root=file_root)
    spec = parse_spec(
        with_changes(dataset={"name": "file", "options": {"path": "animals.csv"}}), limits
    )
    in_sets = {"name": "file", "data_dir": "sets", "options": {"path": "animals.csv"}}
    parse_spec(with_changes(dataset=in_sets), limits)

    from gradreg.train import fit

    config = trial_config(spec, {"noise_scale": 0.01, "prior_variance": 1.0}, file_root)
    assert config.dataset_options["path"] == str(file_root / "animals.csv")
    result = fit(config.replace(epochs=1))
    assert result.dataset["class_names"] == ["ant", "bee", "cat"]
    assert result.metrics["val_nll"] > 0


def test_the_trial_refuses_a_file_outside_the_root_with_the_submission_words(file_root):
    from sweeps.spec.parse import validate_shape
    from sweeps.spec.resolve import trial_config

    document = with_changes(dataset={"name": "file", "options": {"path": "../outside.csv"}})
    submitted = issues_of(document, Limits(data_root=file_root))["dataset.options.path"]
    with pytest.raises(ValueError) as caught:
        trial_config(validate_shape(document), {"noise_scale": 0.01}, file_root)
    assert str(caught.value) == submitted


def test_registering_the_best_model_needs_models_and_a_name_mlflow_accepts():
    assert parse_spec(copy.deepcopy(DIGITS_SWEEP)).tracking.registers_best
    quiet = parse_spec({**copy.deepcopy(DIGITS_SWEEP), "tracking": {"log_model": False}})
    assert not quiet.tracking.registers_best  # no models, so nothing to register
    problems = issues_of({**DIGITS_SWEEP, "tracking": {"log_model": False, "register_best": True}})
    assert "needs its model: set log_model: true" in problems["tracking.register_best"]
    for name in ("team/digits", "digits:v2", " digits"):
        problems = issues_of({**DIGITS_SWEEP, "tracking": {"registered_model": name}})
        assert "tracking.registered_model" in problems
    named = parse_spec(
        {**copy.deepcopy(DIGITS_SWEEP), "tracking": {"registered_model": "Digits v2"}}
    )
    assert named.tracking.registered_model == "Digits v2"
