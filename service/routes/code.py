"""/v1/code: upload a code bundle (a zip of a researcher's own model and data code), kept by
its digest, which a spec names in ``code.digest``.

The API never imports, runs or unpacks a bundle: it checks the zip's entries
(`sweeps.code.check_bundle`) and keeps the bytes. The sweep's Ray Job carries them to the
cluster as its runtime environment (`service.launcher`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import io
import sys
import zipfile

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from service.auth import CallerDep, client_address, current_caller
from service.code_store import CodeBundleMissing, CodeStore
from service.deps import CodeStoreDep, SessionsDep, SettingsDep
from service.openapi import CODE_BODY, problem_responses
from service.schemas import CodeOut
from service.settings import ServiceSettings
from service.store import audit
from sweeps import SpecIssue, SweepSpec
from sweeps.code import BundleError, BundleInfo, CodeBundle, check_bundle

PATH = "/v1/code"
MEDIA_TYPE = "application/zip"

router = APIRouter(tags=["code"], dependencies=[Depends(current_caller)])


def not_allowed(settings: ServiceSettings) -> str | None:
    """Why this service takes no code, or None when it does."""
    if settings.user_code_allowed:
        return None
    return (
        "this service does not take code bundles: a bundle is arbitrary code run on the "
        "cluster, so its operator enables them with GRADREG_ALLOW_USER_CODE=true (they are on "
        "by default only for the embedded local head). Without it, install your code in the "
        "worker image and leave out the spec's code section"
    )


@functools.cache
def environment_modules() -> frozenset[str]:
    """The top-level modules the service's Python environment has: the standard library's,
    every installed distribution's, and the service's own. Its nodes run the same image."""
    installed = importlib.metadata.packages_distributions()
    return frozenset(sys.stdlib_module_names) | frozenset(installed) | {"gradreg", "sweeps"}


def checked(data: bytes, settings: ServiceSettings) -> BundleInfo:
    """`check_bundle` under this service's caps, and no top-level module that the nodes' own
    environment has: Ray puts a bundle first on the import path of the driver and the trials,
    so a `service/`, `torch/` or `json.py` of the user's would be imported in place of the
    real one, and the sweep's driver (`python -m service.worker`) or trials would break far
    from the cause. Raises BundleError naming the entry."""
    info = check_bundle(data, max_bytes=settings.max_code_bytes, max_files=settings.max_code_files)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
    for module in CodeBundle(data, "upload").modules():
        if module in environment_modules():
            entry = next(n for n in names if n.partition("/")[0] in (module, f"{module}.py"))
            raise BundleError(
                f"entry {entry!r} provides the module {module!r}, which the cluster's Python "
                "environment has already (the standard library, an installed package or "
                "gradreg's own): the bundle would be imported in its place; rename it",
                entry,
            )
    return info


def spec_code_issues(
    spec: SweepSpec, settings: ServiceSettings, store: CodeStore
) -> list[SpecIssue]:
    """What is wrong with a submitted spec's code here: code this service does not take (a
    bundle or requirements; an entry point outside GRADREG_ENTRY_POINT_PACKAGES while code is
    off), requirements it does not install, a bundle it does not have. Only the store is read
    (a bucket, maybe): nothing of the code is imported or unpacked."""
    code = spec.code
    refusal = not_allowed(settings)
    if refusal is not None:
        # An entry point calls any function the nodes can import (subprocess:run with its
        # options as keywords is a shell): while code is off, only the operator's packages.
        issues = [
            SpecIssue((section, "entry_point"), outside)
            for section, entry_point in (
                ("model", spec.model.entry_point),
                ("dataset", spec.dataset.entry_point),
            )
            if entry_point is not None
            and (outside := _not_installed_code(entry_point, settings)) is not None
        ]
        if code.digest is not None or code.requirements:
            issues.append(SpecIssue(("code",), refusal))
        return issues
    if code.digest is None and not code.requirements:
        return []
    issues = []
    if code.requirements and not settings.allow_code_requirements:
        issues.append(
            SpecIssue(
                ("code", "requirements"),
                "this service installs no pip requirements (its operator set "
                "GRADREG_ALLOW_CODE_REQUIREMENTS=false): leave them out, or have them "
                "installed in the worker image",
            )
        )
    if code.digest is None:
        issues.append(
            SpecIssue(
                ("code", "digest"),
                "requirements come with a code bundle here: upload your code directory with "
                "POST /v1/code and give the digest it answers (python -m service submit --code "
                "DIR does both); for code installed in the worker image, install the "
                "requirements there too and leave the code section out",
            )
        )
    elif not store.exists(code.digest):
        issues.append(SpecIssue(("code", "digest"), str(CodeBundleMissing(code.digest))))
    return issues


def _not_installed_code(entry_point: str, settings: ServiceSettings) -> str | None:
    """Why ``entry_point`` may not run while code is off, or None when its top-level package
    is one the operator installed for it (GRADREG_ENTRY_POINT_PACKAGES)."""
    package = entry_point.partition(":")[0].split(".")[0]
    if package in settings.installed_code:
        return None
    listed = ", ".join(sorted(settings.installed_code)) or "none"
    return (
        f"this service runs no code of yours (GRADREG_ALLOW_USER_CODE is off), and {package!r} "
        "is not among the packages its operator installed for entry points "
        f"(GRADREG_ENTRY_POINT_PACKAGES: {listed})"
    )


@router.post(
    PATH,
    status_code=201,
    response_model=CodeOut,
    openapi_extra={"requestBody": CODE_BODY},
    responses=problem_responses(
        401,
        415,
        422,
        503,
        described={
            403: "a service that takes no code (GRADREG_ALLOW_USER_CODE)",
            413: "a bundle over GRADREG_MAX_CODE_BYTES",
            422: "not a zip, or an entry it may not hold (an absolute path, a `..` component, "
            "a symlink, a duplicate name, more than GRADREG_MAX_CODE_FILES files): `errors` "
            "names it",
        },
    ),
)
async def upload_code(
    request: Request,
    settings: SettingsDep,
    store: CodeStoreDep,
    sessions: SessionsDep,
    caller: CallerDep,
) -> CodeOut:
    """Keep a code bundle under its sha256 digest (201, the same answer for the same bytes
    again); a spec names it by ``code.digest``. Bundles are never deleted: a stored sweep may
    name one."""
    refusal = not_allowed(settings)
    if refusal is not None:
        raise HTTPException(403, refusal)
    given = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if given != MEDIA_TYPE:
        raise HTTPException(
            415, f"a code bundle is sent as {MEDIA_TYPE}, not {given or 'no content type'}"
        )
    # The app's BodyLimit stops reading past GRADREG_MAX_CODE_BYTES (a 413); check_bundle
    # counts again.
    data = await request.body()
    # A BundleError is a 422 naming the entry (service.problems).
    info = await run_in_threadpool(checked, data, settings)
    await run_in_threadpool(store.put, data)

    def audited() -> None:
        with sessions() as db:
            detail = {"size": info.size, "files": info.files}
            audit.record(db, caller, "code.upload", info.digest, client_address(request), detail)

    await run_in_threadpool(audited)
    return CodeOut(digest=info.digest, size=info.size, files=info.files)
