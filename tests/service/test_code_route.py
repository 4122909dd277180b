"""POST /v1/code and a spec's code section at submit, on the real app served in this process
(without Ray: the sweeps it admits stay pending): every refusal with its message."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.__main__ import main
from service.code_store import bundle_name
from sweeps.code import digest_of, pack_directory
from tests.helpers.api import LiveApi, is_problem, serve_in_process

MAX_CODE_BYTES = 1024 * 1024
MAX_CODE_FILES = 5
ZIP = {"Content-Type": "application/zip"}


@pytest.fixture(scope="module")
def code_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("code-api")


@pytest.fixture(scope="module")
def code_api(code_root: Path) -> Iterator[LiveApi]:
    """A service that takes code (set, since it names a cluster's jobs URL), with small caps,
    keeping its bundles in ``code_root``/bundles."""
    with serve_in_process(
        code_root,
        allow_user_code=True,
        max_code_bytes=MAX_CODE_BYTES,
        max_code_files=MAX_CODE_FILES,
        code_store=str(code_root / "bundles"),
    ) as live:
        yield live


@pytest.fixture
def client(code_api: LiveApi) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {code_api.token}"}
    with httpx.Client(base_url=code_api.url, headers=headers, timeout=60) as opened:
        yield opened


def zip_of(*entries: tuple[str, bytes] | zipfile.ZipInfo, data: bytes = b"x = 1\n") -> bytes:
    """A zip of these entries: (name, bytes), or a ZipInfo written with ``data``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for entry in entries:
            if isinstance(entry, zipfile.ZipInfo):
                archive.writestr(entry, data)
            else:
                archive.writestr(*entry)
    return buffer.getvalue()


def code_dir(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "src"


def test_a_bundle_is_kept_by_its_digest_and_the_same_bytes_get_the_same_answer(
    client, code_root, tmp_path
):
    # Over the app's 64 KiB cap on other bodies (GRADREG_MAX_BODY_BYTES), under the bundle's.
    noise = os.urandom(200 * 1024).hex()
    source = code_dir(tmp_path, **{"mynets/__init__.py": "", "mynets/blob.py": f"B = {noise!r}"})
    data = pack_directory(source)
    assert 64 * 1024 < len(data) < MAX_CODE_BYTES
    first = client.post("/v1/code", content=data, headers=ZIP)
    assert first.status_code == 201, first.text
    assert first.json() == {"digest": digest_of(data), "size": len(data), "files": 2}
    again = client.post("/v1/code", content=data, headers={"Content-Type": "application/zip"})
    assert (again.status_code, again.json()) == (201, first.json())
    assert (code_root / "bundles" / bundle_name(digest_of(data))).read_bytes() == data


def test_a_bundle_over_its_cap_is_refused_whether_or_not_it_says_its_length(client):
    data = os.urandom(MAX_CODE_BYTES + 1)
    declared = client.post("/v1/code", content=data, headers=ZIP)
    body = is_problem(declared, 413)
    assert body["detail"] == (
        f"code bundles are limited to {MAX_CODE_BYTES} bytes (GRADREG_MAX_CODE_BYTES)"
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes read are counted
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    streamed = client.post("/v1/code", content=chunks(), headers=ZIP)
    assert is_problem(streamed, 413)["detail"] == body["detail"]


def test_other_bodies_keep_their_own_cap(client):
    huge = client.post("/v1/sweeps", content=b"[" + b"1," * 40_000 + b"1]")
    detail = is_problem(huge, 413)["detail"]
    assert detail == "request bodies are limited to 65536 bytes (GRADREG_MAX_BODY_BYTES)"


def test_a_bundle_is_sent_as_a_zip(client):
    data = zip_of(("a.py", b""))
    for headers in ({"Content-Type": "application/json"}, {}):
        refused = client.post("/v1/code", content=data, headers=headers)
        assert "a code bundle is sent as application/zip" in is_problem(refused, 415)["detail"]


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("entries", "entry", "message"),
    [
        ([("mynets/../../evil.py", b"")], "mynets/../../evil.py", "has a '..' component"),
        ([("../evil.py", b"")], "../evil.py", "has a '..' component"),
        ([("/etc/cron.d/evil", b"")], "/etc/cron.d/evil", "is an absolute path"),
        ([_symlink("mynets/link.py")], "mynets/link.py", "is a symlink"),
        ([("a.py", b""), ("a.py", b"")], "a.py", "appears twice"),
    ],
    ids=["zip-slip", "parent", "absolute", "symlink", "duplicate"],
)
def test_an_entry_a_bundle_may_not_hold_is_named(client, entries, entry, message):
    if entry == "a.py":
        with pytest.warns(UserWarning, match="Duplicate name"):
            data = zip_of(*entries)
    else:
        data = zip_of(*entries)
    body = is_problem(client.post("/v1/code", content=data, headers=ZIP), 422)
    assert body["detail"] == "the code bundle is refused"
    (error,) = body["errors"]
    assert (error["entry"], error["path"]) == (entry, entry)
    assert error["message"].startswith(f"entry {entry!r} {message}")


@pytest.mark.parametrize(
    ("entry", "module"),
    [("service/worker.py", "service"), ("json.py", "json"), ("torch/__init__.py", "torch")],
)
def test_a_bundle_may_not_shadow_a_module_the_nodes_have(client, entry, module):
    """Ray puts the bundle first on the driver's and the trials' import path: its `service`
    would be imported by `python -m service.worker` in place of the service's own."""
    data = zip_of(("mynets/mixer.py", b""), (entry, b""))
    (error,) = is_problem(client.post("/v1/code", content=data, headers=ZIP), 422)["errors"]
    assert error["entry"] == entry
    assert error["message"].startswith(
        f"entry {entry!r} provides the module {module!r}, which the cluster's Python "
        "environment has already"
    )
    assert error["message"].endswith("rename it")


def test_a_bundle_over_the_file_cap_or_not_a_zip_is_refused(client):
    many = zip_of(*[(f"m{i}.py", b"") for i in range(MAX_CODE_FILES + 1)])
    (error,) = is_problem(client.post("/v1/code", content=many, headers=ZIP), 422)["errors"]
    assert error["entry"] is None and error["path"] == "body"
    assert error["message"] == f"the bundle holds 6 files, over the cap of {MAX_CODE_FILES}"
    junk = client.post("/v1/code", content=b"not a zip at all", headers=ZIP)
    (error,) = is_problem(junk, 422)["errors"]
    assert error["message"].startswith("the bundle is not a zip file")


def test_a_service_that_takes_no_code_says_how_to_enable_it(tmp_path):
    # It names a cluster's jobs URL and leaves GRADREG_ALLOW_USER_CODE unset: off.
    with serve_in_process(tmp_path) as live:
        headers = {"Authorization": f"Bearer {live.token}", **ZIP}
        refused = httpx.post(live.url + "/v1/code", content=zip_of(("a.py", b"")), headers=headers)
    detail = is_problem(refused, 403)["detail"]
    assert "does not take code bundles" in detail
    assert "GRADREG_ALLOW_USER_CODE=true" in detail
    assert not (tmp_path / "var" / "code").exists()


def test_the_openapi_document_lists_the_route_with_its_body_and_problems(client):
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/v1/code"]["post"]
    assert operation["requestBody"]["content"] == {
        "application/zip": {"schema": {"type": "string", "format": "binary"}}
    }
    assert operation["security"] == [{"bearer": []}]
    answer = operation["responses"]["201"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/CodeOut"}
    assert set(document["components"]["schemas"]["CodeOut"]["properties"]) == {
        "digest",
        "size",
        "files",
    }
    for status in ("401", "403", "413", "415", "422"):
        content = operation["responses"][status]["content"]
        assert "application/problem+json" in content, status
    assert "GRADREG_MAX_CODE_BYTES" in operation["responses"]["413"]["description"]


# ---------------------------------------------------------------- a spec's code section at submit


def own_spec(name: str, **code: object) -> dict:
    """A sweep of entry points into the user's code (examples/own-model), with this code
    section."""
    spec = {
        "name": name,
        "dataset": {"entry_point": "mydata.signals:load", "options": {"n": 400}},
        "model": {"entry_point": "mynets.mixer:build", "options": {"width": 16}},
        "method": "vl-uniform",
        "fixed": {"epochs": 2, "device": "cpu"},
        "parameters": {"noise_scale": {"type": "float", "low": 0.001, "high": 0.1}},
        "budget": {"max_trials": 2},
    }
    if code:
        spec["code"] = code
    return spec


def uploaded(client: httpx.Client, tmp_path: Path) -> str:
    data = pack_directory(code_dir(tmp_path, **{"mynets/mixer.py": "def build(): ...\n"}))
    response = client.post("/v1/code", content=data, headers=ZIP)
    assert response.status_code == 201, response.text
    return response.json()["digest"]


def test_a_spec_names_a_bundle_the_service_keeps(client, tmp_path):
    digest = uploaded(client, tmp_path)
    accepted = client.post("/v1/sweeps", json=own_spec("bundled", digest=digest))
    assert accepted.status_code == 202, accepted.text
    stored = client.get(f"/v1/sweeps/{accepted.json()['id']}/spec").json()["spec"]
    assert stored["code"] == {"digest": digest, "requirements": []}


def test_a_bundle_the_service_does_not_have_is_refused_at_code_digest(client):
    digest = "sha256:" + "ab" * 32
    body = is_problem(client.post("/v1/sweeps", json=own_spec("unknown", digest=digest)), 422)
    assert body["errors"] == [
        {
            "loc": ["code", "digest"],
            "path": "code.digest",
            "message": f"the service has no code bundle {digest}; upload it with POST /v1/code",
        }
    ]


def test_requirements_come_with_a_bundle(client):
    spec = own_spec("no-bundle", requirements=["einops==0.8.2"])
    (error,) = is_problem(client.post("/v1/sweeps", json=spec), 422)["errors"]
    assert error["path"] == "code.digest"
    assert error["message"].startswith("requirements come with a code bundle here")


def test_a_service_that_takes_no_code_runs_entry_points_only_into_packages_it_lists(tmp_path):
    """Code off: an entry point names a function the nodes call with the spec's options as
    keywords (subprocess:run is a shell), so only the packages the operator installed for it
    (GRADREG_ENTRY_POINT_PACKAGES) are taken; their entry points need no bundle. Neither is
    imported here (this process cannot)."""
    with serve_in_process(tmp_path, entry_point_packages="mynets, mydata") as live:
        headers = {"Authorization": f"Bearer {live.token}"}
        accepted = httpx.post(live.url + "/v1/sweeps", json=own_spec("installed"), headers=headers)
        assert accepted.status_code == 202, accepted.text
        shell = own_spec("shell")
        shell["dataset"] = {"entry_point": "subprocess:run", "options": {"args": "id"}}
        refused = httpx.post(live.url + "/v1/sweeps", json=shell, headers=headers)
        bundled = own_spec("bundled", digest="sha256:" + "0" * 64)
        refused_bundle = httpx.post(live.url + "/v1/sweeps", json=bundled, headers=headers)
    (error,) = is_problem(refused, 422)["errors"]
    assert error["path"] == "dataset.entry_point"
    assert error["message"] == (
        "this service runs no code of yours (GRADREG_ALLOW_USER_CODE is off), and 'subprocess' "
        "is not among the packages its operator installed for entry points "
        "(GRADREG_ENTRY_POINT_PACKAGES: mydata, mynets)"
    )
    (error,) = is_problem(refused_bundle, 422)["errors"]
    assert error["path"] == "code"
    assert "does not take code bundles" in error["message"]
    assert "GRADREG_ALLOW_USER_CODE=true" in error["message"]


def test_without_listed_packages_a_service_that_takes_no_code_runs_no_entry_point(tmp_path):
    with serve_in_process(tmp_path) as live:
        headers = {"Authorization": f"Bearer {live.token}"}
        refused = httpx.post(live.url + "/v1/sweeps", json=own_spec("own"), headers=headers)
    errors = is_problem(refused, 422)["errors"]
    assert [e["path"] for e in errors] == ["model.entry_point", "dataset.entry_point"]
    assert errors[0]["message"].endswith("(GRADREG_ENTRY_POINT_PACKAGES: none)")


def test_an_operator_may_forbid_requirements(tmp_path):
    with serve_in_process(tmp_path, allow_user_code=True, allow_code_requirements=False) as live:
        client = httpx.Client(
            base_url=live.url, headers={"Authorization": f"Bearer {live.token}"}, timeout=60
        )
        with client:
            digest = uploaded(client, tmp_path)
            spec = own_spec("pinned", digest=digest, requirements=["einops==0.8.2"])
            refused = client.post("/v1/sweeps", json=spec)
            accepted = client.post("/v1/sweeps", json=own_spec("plain", digest=digest))
    (error,) = is_problem(refused, 422)["errors"]
    assert error["path"] == "code.requirements"
    assert "GRADREG_ALLOW_CODE_REQUIREMENTS=false" in error["message"]
    assert accepted.status_code == 202, accepted.text


# ---------------------------------------------------------------- python -m service submit --code


def spec_file(tmp_path: Path, document: dict) -> str:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(document))
    return str(path)


def test_submit_code_packs_uploads_and_names_the_bundle(code_api, tmp_path, capsys):
    source = code_dir(tmp_path, **{"mynets/mixer.py": "def build(): ...\n", "mydata/x.py": ""})
    spec = spec_file(tmp_path, own_spec("cli", requirements=["einops==0.8.2"]))
    args = ["--url", code_api.url, "--token", code_api.token]
    assert main(["submit", spec, "--code", str(source), *args]) == 0
    out = capsys.readouterr().out
    digest = digest_of(pack_directory(source))
    assert f"uploaded {source}: {digest} (2 files, " in out
    sweep_id = out.split("submitted ", 1)[1].split()[0]
    headers = {"Authorization": f"Bearer {code_api.token}"}
    answer = httpx.get(f"{code_api.url}/v1/sweeps/{sweep_id}/spec", headers=headers).json()
    assert answer["spec"]["code"] == {"digest": digest, "requirements": ["einops==0.8.2"]}


def test_submit_code_refusals_exit_2_saying_why(code_api, tmp_path, capsys):
    args = ["--url", code_api.url, "--token", code_api.token]
    spec = spec_file(tmp_path, own_spec("cli-refused"))
    assert main(["submit", spec, "--code", str(tmp_path / "nowhere"), *args]) == 2
    assert "is not a directory" in capsys.readouterr().err

    source = code_dir(tmp_path, **{"mynets/mixer.py": "def build(): ...\n"})
    (source / "mynets" / "link.py").symlink_to(source / "mynets" / "mixer.py")
    assert main(["submit", spec, "--code", str(source), *args]) == 2
    assert "holds a symlink, 'mynets/link.py'" in capsys.readouterr().err
    (source / "mynets" / "link.py").unlink()

    other = spec_file(tmp_path, own_spec("cli-other", digest="sha256:" + "1" * 64))
    assert main(["submit", other, "--code", str(source), *args]) == 2
    assert "code.digest names the bundle sha256:111" in capsys.readouterr().err

    too_many = code_dir(tmp_path / "many", **{f"m{i}.py": "" for i in range(MAX_CODE_FILES + 1)})
    assert main(["submit", spec, "--code", str(too_many), *args]) == 2
    assert "error: 422: the code bundle is refused\n  body: the bundle holds 6 files" in (
        capsys.readouterr().err
    )


def test_submit_code_to_a_service_that_takes_none_exits_2(tmp_path, capsys):
    source = code_dir(tmp_path, **{"mynets/mixer.py": "def build(): ...\n"})
    spec = spec_file(tmp_path, own_spec("cli-off"))
    with serve_in_process(tmp_path / "off") as live:
        code = main(
            ["submit", spec, "--code", str(source), "--url", live.url, "--token", live.token]
        )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 403: this service does not take code bundles")
    assert "GRADREG_ALLOW_USER_CODE=true" in err
