"""`python -m service submit`: the spec file is read as `python -m sweeps validate` reads it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service import __main__ as service_main
from service.client import SpecFileError, read_spec
from service.store import status_machine, sweep_queries
from tests.helpers.api import LiveApi
from tests.helpers.store import new_sweep

ROOT = Path(__file__).resolve().parents[2]
SPEC = """\
name: yaml-numbers
dataset: {name: iris}
method: map
fixed: {lr: 1e-4, epochs: 1}
"""


def client_args(live_api: LiveApi) -> list[str]:
    return ["--url", live_api.url, "--token", live_api.token]


def sweep_names(live_api: LiveApi) -> list[str]:
    """The names of the sweeps the live API has stored, oldest first."""
    with live_api.sessions() as session:
        return [sweep.name for sweep in reversed(sweep_queries.list_sweeps(session, limit=500)[0])]


def test_yaml_exponent_without_a_dot_is_a_float(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    document = read_spec(str(path))
    assert document["fixed"]["lr"] == 1e-4 and isinstance(document["fixed"]["lr"], float)


def test_submit_posts_the_number_not_a_string(tmp_path, live_api, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    assert service_main.main(["submit", str(path), *client_args(live_api)]) == 0
    sweep_id = capsys.readouterr().out.split()[1]
    with live_api.sessions() as session:
        stored = sweep_queries.get_sweep(session, sweep_id).spec
    assert (stored["name"], stored["fixed"]) == ("yaml-numbers", {"lr": 1e-4, "epochs": 1})
    assert isinstance(stored["fixed"]["lr"], float)


def test_json_spec_is_read_too(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"name": "j", "fixed": {"lr": 0.001}}))
    assert read_spec(str(path)) == {"name": "j", "fixed": {"lr": 0.001}}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("name: [unclosed\n", "not valid YAML or JSON"),
        ("- just\n- a list\n", "a spec is a mapping, got list"),
        ("", "a spec is a mapping, got NoneType"),
        ("name: x\nfixed: {lr: .nan}\n", "JSON cannot carry"),
        ("name: x\nwhen: 2024-01-01\n", "JSON cannot carry"),
    ],
)
def test_bad_spec_file_is_a_clean_error_naming_the_file(
    tmp_path, live_api, capsys, content, problem
):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(SpecFileError, match=problem) as caught:
        read_spec(str(path))
    assert str(path) in str(caught.value)

    before = sweep_names(live_api)
    assert service_main.main(["submit", str(path), *client_args(live_api)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and problem in err
    assert "Traceback" not in err
    assert sweep_names(live_api) == before  # nothing was sent


@pytest.mark.parametrize("kind", ["missing", "directory", "not utf-8"])
def test_unreadable_spec_file_is_a_clean_error(tmp_path, live_api, capsys, kind):
    path = tmp_path / "spec.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "not utf-8":
        path.write_bytes(b"name: \xff\xfe\n")
    before = sweep_names(live_api)
    assert service_main.main(["submit", str(path), *client_args(live_api)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read spec file {path}")
    assert sweep_names(live_api) == before


def test_the_client_imports_nothing_heavy():
    check = (
        "import sys, service.client; "
        "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert found.stdout.strip() == "[]"


def test_status_names_the_registered_model_or_why_there_is_none(live_api, capsys):
    sweep_id = new_sweep(live_api.sessions, "succeeded")
    args = ["status", sweep_id, *client_args(live_api)]
    assert service_main.main(args) == 0
    assert "registered model" not in capsys.readouterr().out
    for registered, said in [
        ({"name": "digits", "version": "2", "uri": "models:/digits/2"}, "models:/digits/2"),
        (
            {"name": "digits", "error": "MlflowException: no registry"},
            "not registered (MlflowException: no registry)",
        ),
    ]:
        with live_api.sessions() as session:
            status_machine.update_sweep(session, sweep_id, registered_model=registered)
        assert service_main.main(args) == 0
        assert f"  registered model: {said}\n" in capsys.readouterr().out
