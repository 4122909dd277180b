"""Properties of the spec validator, over generated documents (Hypothesis).

- Whatever it is given, `parse_spec` returns a spec or raises `SpecError`; nothing else escapes.
- A rejected mapping's every issue names a field of the spec.
- An accepted spec survives a round trip through JSON and through YAML unchanged.

Documents come from a builder of valid specs (every dataset, method and search algorithm the
validator knows), from one random mutation of such a spec, and from arbitrary JSON.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gradreg.methods import METHODS as SPEC_METHODS
from sweeps import Limits, SpecError, SweepSpec, dump_spec, parse_spec, parse_spec_text

LIMITS = Limits(max_trials=100, max_concurrent_trials=8, max_epochs=50)
FIELDS = set(SweepSpec.model_fields)
DATASETS = ["digits", "iris", "wine", "breast_cancer", "moons", "blobs", "mnist1d"]
# Strings that YAML (1.1 or 1.2) would read as something else if written unquoted.
TRICKY_TEXT = [
    *("1e5", "1.5e-3", "-0.0", "12", "0x1F", "0o17", "1_000", ".inf", "2026-11-26"),
    *("yes", "no", "on", "true", "null", "~", "- a", "a: b", "#x", "'", '"', "é ü ✓"),
]
PROFILE = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

text = st.one_of(st.text(max_size=40), st.sampled_from(TRICKY_TEXT))
positive = st.floats(min_value=1e-6, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def float_range(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(positive)
    high = draw(st.floats(min_value=low * 1.01 + 1e-9, max_value=low * 1000 + 1))
    scale = draw(st.sampled_from(["linear", "log"]))
    return {"type": "float", "low": low, "high": high, "scale": scale}


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    method = draw(st.sampled_from(sorted(SPEC_METHODS)))
    parameters: dict[str, Any] = {"prior_variance": draw(float_range())}
    fixed: dict[str, Any] = {
        "epochs": draw(st.integers(1, LIMITS.max_epochs)),
        "lr": draw(st.floats(1e-5, 0.5)),
        "batch_size": draw(st.integers(1, 512)),
    }
    if "noise_scale" in SPEC_METHODS[method].required:
        if draw(st.booleans()):
            parameters["noise_scale"] = draw(float_range())
        else:
            fixed["noise_scale"] = draw(positive)
    objectives = draw(
        st.sampled_from(
            [
                [{"metric": "val_nll"}],
                [{"metric": "val_accuracy", "goal": "maximize"}],
                [{"metric": "val_nll"}, {"metric": "val_ece"}],
            ]
        )
    )
    algorithms = ["tpe", "random", "nsga2"] + ([] if len(objectives) > 1 else ["cmaes", "gp"])
    document = {
        "name": draw(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,30}", fullmatch=True)),
        "description": draw(text),
        "tags": draw(st.lists(text.filter(lambda t: 0 < len(t) <= 64), max_size=4)),
        "dataset": {
            "name": draw(st.sampled_from(DATASETS)),
            "split_seed": draw(st.integers(0, 2**31)),
            "val_fraction": draw(st.floats(0.05, 0.4)),
        },
        "model": {
            "name": "mlp",
            "options": {"hidden": draw(st.lists(st.integers(1, 256), max_size=3))},
        },
        "method": method,
        "fixed": fixed,
        "parameters": parameters,
        "objectives": objectives,
        "search": {
            "algorithm": draw(st.sampled_from(algorithms)),
            "seed": draw(st.integers(0, 99)),
        },
        "budget": {
            "max_trials": draw(st.integers(1, LIMITS.max_trials)),
            "max_concurrent_trials": draw(st.integers(1, LIMITS.max_concurrent_trials)),
        },
    }
    return document


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with one thing changed at a random place: a key dropped, a value
    replaced by arbitrary JSON, or an unknown key added."""
    document = draw(valid_documents())
    path: list[Any] = []
    node: Any = document
    while isinstance(node, dict) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node, key=str)))
        path.append(key)
        node = node[key]
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["drop", "replace", "add"]))
    if action == "drop" and path:
        del parent[path[-1]]
    elif action == "replace" and path:
        parent[path[-1]] = draw(json_values)
    elif isinstance(node, dict):
        node[draw(text)] = draw(json_values)
    return document


def assert_names_fields(error: SpecError, document: dict[str, Any]) -> None:
    assert error.issues
    for issue in error.issues:
        assert issue.loc and issue.path != "(spec)", f"an issue without a field: {issue}"
        head = issue.loc[0]
        unknown = issue.message.startswith("unknown field") and head in document
        assert head in FIELDS or unknown, f"{issue.path}: names neither a spec field nor a key"
        assert issue.message


def assert_round_trips(spec: SweepSpec) -> None:
    for fmt in ("json", "yaml"):
        assert parse_spec_text(dump_spec(spec, fmt), LIMITS) == spec, fmt
    assert parse_spec(json.loads(json.dumps(spec.to_document())), LIMITS) == spec


@PROFILE
@given(valid_documents())
def test_every_built_spec_is_accepted_and_round_trips(document):
    spec = parse_spec(document, LIMITS)
    assert_round_trips(spec)


@PROFILE
@given(mutated_documents())
def test_a_mutated_spec_is_accepted_and_round_trips_or_its_issues_name_fields(document):
    try:
        spec = parse_spec(document, LIMITS)
    except SpecError as error:
        assert_names_fields(error, document)
    else:
        assert_round_trips(spec)


@PROFILE
@given(json_values)
def test_arbitrary_json_gets_a_spec_error_never_a_crash(value):
    assume(not isinstance(value, dict) or "name" not in value)
    with pytest.raises(SpecError) as raised:
        parse_spec(value, LIMITS)
    if isinstance(value, dict):
        assert_names_fields(raised.value, value)
    else:
        assert [issue.loc for issue in raised.value.issues] == [()]


@PROFILE
@given(st.text(max_size=200))
def test_arbitrary_text_gets_a_spec_error_never_a_crash(source):
    try:
        parse_spec_text(source, LIMITS)
    except SpecError as error:
        assert error.issues
    except RecursionError:  # pragma: no cover - would be a finding
        pytest.fail("deeply nested input crashed the parser")


def test_yaml_strings_that_look_like_numbers_stay_strings():
    document = {
        "name": "tricky",
        "description": "1e5",
        "tags": ["1.5e-3", "yes", "null", "12"],
        "dataset": {"name": "iris"},
        "method": "map",
    }
    spec = parse_spec(document, LIMITS)
    written = dump_spec(spec, "yaml")
    assert yaml.safe_load(written)["description"] == "1e5"
    assert parse_spec_text(written, LIMITS) == spec


@pytest.mark.parametrize(
    "source", ["[" * 30_000 + "]" * 30_000, "- " * 5_000 + "x", '{"a":' * 5_000 + "1" + "}" * 5_000]
)
def test_input_nested_too_deeply_is_a_spec_error(source):
    with pytest.raises(SpecError, match="nested too deeply"):
        parse_spec_text(source, LIMITS)
