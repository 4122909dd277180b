"""/v1/code: upload a code bundle (a zip of a researcher's own model and data code), kept by
its digest, which a spec names in ``code.digest``.

The API never imports, runs or unpacks a bundle: it checks the zip's entries
(`sweeps.code.check_bundle`) and keeps the bytes. The sweep's Ray Job carries them to the
cluster as its runtime environment (`service.launcher`).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from service.auth import require_token
from service.code_store import CodeBundleMissing, CodeStore
from service.deps import CodeStoreDep, SettingsDep
from service.openapi import CODE_BODY, problem_responses
from service.schemas import CodeOut
from service.settings import ServiceSettings
from sweeps import SpecIssue, SweepSpec
from sweeps.code import check_bundle

PATH = "/v1/code"
MEDIA_TYPE = "application/zip"

router = APIRouter(tags=["code"], dependencies=[Depends(require_token)])


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


def spec_code_issues(
    spec: SweepSpec, settings: ServiceSettings, store: CodeStore
) -> list[SpecIssue]:
    """What is wrong with a submitted spec's code section here: code this service does not
    take, requirements it does not install, a bundle it does not have. Only the store is read
    (a bucket, maybe): nothing of the code is imported or unpacked. A spec whose code section
    is empty (entry points into code installed in the worker image, or none) has none."""
    code = spec.code
    if code.digest is None and not code.requirements:
        return []
    refusal = not_allowed(settings)
    if refusal is not None:
        return [SpecIssue(("code",), refusal)]
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
            403: "a token that is not accepted, or a service that takes no code "
            "(GRADREG_ALLOW_USER_CODE)",
            413: "a bundle over GRADREG_MAX_CODE_BYTES",
            422: "not a zip, or an entry it may not hold (an absolute path, a `..` component, "
            "a symlink, a duplicate name, more than GRADREG_MAX_CODE_FILES files): `errors` "
            "names it",
        },
    ),
)
async def upload_code(request: Request, settings: SettingsDep, store: CodeStoreDep) -> CodeOut:
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
    info = await run_in_threadpool(
        check_bundle, data, max_bytes=settings.max_code_bytes, max_files=settings.max_code_files
    )
    await run_in_threadpool(store.put, data)
    return CodeOut(digest=info.digest, size=info.size, files=info.files)
