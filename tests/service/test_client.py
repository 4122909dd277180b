"""`python -m service submit`: the spec file is read as `python -m sweeps validate` reads it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service import __main__ as service_main
from service import client as service_client
from service.client import SpecFileError, describe, read_spec

ROOT = Path(__file__).resolve().parents[2]
DUMMY = ["--url", "http://127.0.0.1:9", "--token", "not-used"]  # never reached
SPEC = """\
name: yaml-numbers
dataset: {name: iris}
method: map
fixed: {lr: 1e-4, epochs: 1}
"""


@pytest.fixture
def posted(monkeypatch) -> list[dict]:
    """Every body `submit` posts, answered by an in-process fake of the API."""
    bodies: list[dict] = []
    sweep = {
        "id": "sw-1",
        "name": "yaml-numbers",
        "status": "pending",
        "attempt": 1,
        "counts": {},
        "best": [],
        "links": {"trials": "/v1/sweeps/sw-1/trials"},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            bodies.append(json.loads(request.content))
            return httpx.Response(202, json=sweep)
        return httpx.Response(
            200,
            json={"items": [], "next_cursor": None}
            if request.url.path.endswith("/trials")
            else sweep,
        )

    real_client = httpx.Client

    def fake_client(**kwargs):
        return real_client(transport=httpx.MockTransport(answer), **kwargs)

    monkeypatch.setattr(service_client.httpx, "Client", fake_client)
    return bodies


def test_yaml_exponent_without_a_dot_is_a_float(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    document = read_spec(str(path))
    assert document["fixed"]["lr"] == 1e-4 and isinstance(document["fixed"]["lr"], float)


def test_submit_posts_the_number_not_a_string(tmp_path, posted, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    assert service_main.main(["submit", str(path), *DUMMY]) == 0
    assert posted == [
        {
            "name": "yaml-numbers",
            "dataset": {"name": "iris"},
            "method": "map",
            "fixed": {"lr": 1e-4, "epochs": 1},
        }
    ]
    assert "submitted sw-1" in capsys.readouterr().out


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
def test_bad_spec_file_is_a_clean_error_naming_the_file(tmp_path, posted, capsys, content, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(SpecFileError, match=problem) as caught:
        read_spec(str(path))
    assert str(path) in str(caught.value)

    assert service_main.main(["submit", str(path), *DUMMY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and problem in err
    assert "Traceback" not in err
    assert posted == []  # nothing was sent


@pytest.mark.parametrize("kind", ["missing", "directory", "not utf-8"])
def test_unreadable_spec_file_is_a_clean_error(tmp_path, posted, capsys, kind):
    path = tmp_path / "spec.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "not utf-8":
        path.write_bytes(b"name: \xff\xfe\n")
    assert service_main.main(["submit", str(path), *DUMMY]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read spec file {path}")
    assert posted == []


def test_the_client_imports_nothing_heavy():
    check = (
        "import sys, service.client; "
        "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert found.stdout.strip() == "[]"


def test_describe_names_the_registered_model_or_why_there_is_none():
    sweep = {
        "id": "s1", "name": "digits", "status": "succeeded", "reason": "4 of 4", "attempt": 1,
        "counts": {"succeeded": 4}, "best": [], "links": {"trials": "/v1/sweeps/s1/trials"},
    }  # fmt: skip
    assert "registered model" not in describe(sweep, [])
    registered = {"name": "digits", "version": "2", "uri": "models:/digits/2"}
    assert "  registered model: models:/digits/2" in describe(
        {**sweep, "registered_model": registered}, []
    )
    failed = {"name": "digits", "error": "MlflowException: no registry"}
    assert "not registered (MlflowException: no registry)" in describe(
        {**sweep, "registered_model": failed}, []
    )
