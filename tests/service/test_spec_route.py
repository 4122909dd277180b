"""GET /v1/sweeps/{id}/spec and `python -m service spec`: the spec a sweep runs under, as it was
admitted, with its caps.

A real API process (`python -m service`) without a Ray head: reading specs needs none, and the
sweeps it stores wait as pending (their submission fails: nothing listens at the jobs URL).
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import yaml

from service import __main__ as service_main
from service.launcher import free_port
from service.schemas import LimitsOut
from service.store import sweep_queries
from service.store.database import make_engine, session_factory
from sweeps import Limits, parse_spec
from sweeps.spec.parse import read_document
from tests.helpers.api import TOKENS, ApiProcess, is_problem

CAP_S = 5400.0  # the deployment's time budget cap: what a spec without one is given
SPEC = {
    "name": "spec-readback",
    "tags": ["readback"],
    "dataset": {"name": "cifar10", "data_dir": "sets/cifar"},
    "model": {"name": "cnn"},
    "method": "map",
    "fixed": {"epochs": 2, "lr": 1e-4},
    "parameters": {"batch_size": {"type": "categorical", "choices": [64, 128]}},
    # Strings YAML 1.1 would write bare and YAML 1.2 (the spec's) reads as numbers.
    "description": "1e5",
    "budget": {"max_trials": 3},
}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec-api")
    (root / "data").mkdir()
    process = ApiProcess(
        root,
        extra_env={
            # Nothing listens there: the API starts no Ray head of its own (it is not ready).
            "GRADREG_RAY_JOBS_URL": f"http://127.0.0.1:{free_port()}",
            "GRADREG_MAX_TIME_BUDGET_S": str(CAP_S),
            "GRADREG_MAX_EPOCHS": "50",
            "GRADREG_DATA_DIR": str(root / "data"),
        },
    ).start(ready=False)
    yield process
    process.stop()


@pytest.fixture
def client(api):
    with api.client() as opened:
        yield opened


def submitted(client, document: dict) -> str:
    response = client.post("/v1/sweeps", json=document)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_the_spec_comes_back_as_admitted_with_its_caps(api, client):
    sweep_id = submitted(client, SPEC)
    sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
    assert sweep["links"]["spec"] == f"/v1/sweeps/{sweep_id}/spec"
    response = client.get(sweep["links"]["spec"])
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["sweep_id"] == sweep_id
    spec = answer["spec"]
    # the service's fill-ins: the cap's time budget, and every section's defaults
    assert spec["budget"] == {
        "max_trials": 3,
        "max_concurrent_trials": 1,
        "max_failed_trials": None,
        "time_budget_s": CAP_S,
    }
    assert spec["dataset"] == {
        **SPEC["dataset"],
        "entry_point": None,
        "split_seed": 0,
        "val_fraction": 0.15,
        "test_fraction": None,
        "options": {},
    }
    assert spec["model"] == {"name": "cnn", "entry_point": None, "options": {}}
    assert spec["objectives"] == [{"metric": "val_nll", "goal": "minimize"}]
    # what was given is kept as given
    for section in ("name", "tags", "method", "fixed", "parameters", "description"):
        assert spec[section] == SPEC[section], section
    assert answer["limits"] == {
        **Limits().to_document(),
        "max_time_budget_s": CAP_S,
        "max_epochs": 50,
        "data_root": str(api.root / "data"),
    }
    # the document is the spec in force: it parses to the same spec under the same caps
    limits = Limits.from_document(answer["limits"])
    assert parse_spec(spec, limits).to_document() == spec


def test_a_sweep_stored_before_caps_were_kept_has_null_limits(api, client):
    engine = make_engine(f"sqlite:///{api.var_dir / 'service.db'}")
    try:
        with session_factory(engine)() as session:
            document = parse_spec(SPEC, Limits()).to_document()
            sweep, _ = sweep_queries.create_sweep(session, document, limits=None)
            sweep_id = sweep.id
    finally:
        engine.dispose()
    answer = client.get(f"/v1/sweeps/{sweep_id}/spec").json()
    assert answer == {"sweep_id": sweep_id, "spec": document, "limits": None}


def test_an_unknown_sweep_is_a_problem_404(client):
    body = is_problem(client.get("/v1/sweeps/" + "0" * 32 + "/spec"), 404)
    assert "0" * 32 in body["detail"]


def test_the_route_needs_a_token(api):
    with api.client(token=None) as anonymous:
        is_problem(anonymous.get("/v1/sweeps/" + "0" * 32 + "/spec"), 401)


def test_the_openapi_document_describes_the_route(client):
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/v1/sweeps/{sweep_id}/spec"]["get"]
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/SpecOut"}
    problem = {"$ref": "#/components/schemas/Problem"}
    assert operation["responses"]["404"]["content"]["application/problem+json"]["schema"] == problem
    assert operation["security"] == [{"bearer": []}]
    schemas = document["components"]["schemas"]
    out = schemas["SpecOut"]["properties"]
    assert out["spec"]["allOf"] == [{"$ref": "#/components/schemas/SweepSpec"}]
    assert "spec" in schemas["Links"]["required"]
    prefix = "#/components/schemas/"
    dangling = {ref for ref in refs(document) if ref.removeprefix(prefix) not in schemas}
    assert dangling == set()


def refs(node: object) -> list[str]:
    """Every $ref in an OpenAPI document."""
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs(value)]
    return []


def test_limits_out_has_every_limit():
    """A cap added to sweeps.Limits must be added to the answer's model (it would be dropped)."""
    assert list(LimitsOut.model_fields) == [f.name for f in dataclasses.fields(Limits)]


# ---------------------------------------------------------------- python -m service spec


def run_cli(api, capsys, *argv: str) -> tuple[int, str, str]:
    code = service_main.main([*argv, "--url", api.url, "--token", TOKENS[0]])
    out, err = capsys.readouterr()
    return code, out, err


def test_spec_prints_a_yaml_spec_file_with_the_caps_as_comments(api, client, capsys, tmp_path):
    sweep_id = submitted(client, SPEC)
    answer = client.get(f"/v1/sweeps/{sweep_id}/spec").json()
    code, out, err = run_cli(api, capsys, "spec", sweep_id)
    assert (code, err) == (0, "")
    header = [line for line in out.splitlines() if line.startswith("#")]
    assert header[0] == f"# sweep {sweep_id}: its spec as admitted, defaults filled in"
    assert f"max_time_budget_s {CAP_S}" in header[1] and "max_epochs 50" in header[1]
    assert json.dumps(str(api.root / "data")) in header[1]
    # the text is the stored spec, read as a spec file is read ("1e5" stays a string) ...
    assert read_document(out) == answer["spec"]
    assert yaml.safe_load(out)["description"] == "1e5"
    # ... and `submit` takes it back
    path = tmp_path / "again.yaml"
    path.write_text(out)
    code, out, err = run_cli(api, capsys, "submit", str(path))
    assert code == 0, err
    again = out.split()[1]
    assert client.get(f"/v1/sweeps/{again}/spec").json()["spec"] == answer["spec"]


def test_spec_json_prints_the_api_answer(api, client, capsys):
    sweep_id = submitted(client, {**copy.deepcopy(SPEC), "budget": {"time_budget_s": 60}})
    code, out, err = run_cli(api, capsys, "spec", sweep_id, "--json")
    assert (code, err) == (0, "")
    answer = json.loads(out)
    assert answer == client.get(f"/v1/sweeps/{sweep_id}/spec").json()
    assert answer["spec"]["budget"]["time_budget_s"] == 60  # given: kept, not the cap


def test_spec_of_an_unknown_sweep_exits_2_naming_it(api, capsys):
    code, out, err = run_cli(api, capsys, "spec", "0" * 32)
    assert code == 2 and out == ""
    assert err.startswith("error: 404: ") and "0" * 32 in err
