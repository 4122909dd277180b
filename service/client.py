"""A small client of the API: `python -m service submit SPEC --wait`, `status ID`, `spec ID`,
`extend ID`, `me` and `users ...`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

from service.statuses import PARETO_OF_FINISHED, TERMINAL
from sweeps.records import best_so_far_text, counts_text

Json = dict[str, Any]  # an answer of the API, as its schemas (service.schemas) describe it


class ApiError(RuntimeError):
    """An error answer from the API; ``status`` is its HTTP status code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SpecFileError(ValueError):
    """A spec file that cannot be read, or does not hold a spec document; names the file."""


class Client:
    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> Json:
        answer: Json = self._answer(method, path, **kwargs)
        return answer

    def _list(self, path: str) -> list[Json]:
        answer: list[Json] = self._answer("GET", path)
        return answer

    def _answer(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text}
            details = [f"  {e['path']}: {e['message']}" for e in body.get("errors") or []]
            message = "\n".join([f"{response.status_code}: {body.get('detail')}", *details])
            raise ApiError(message, response.status_code)
        return response.json()

    def submit(self, document: Json, idempotency_key: str | None = None) -> Json:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/sweeps", json=document, headers=headers)

    def extend(self, sweep_id: str, budget: Json) -> Json:
        """More budget for a sweep that ended (``max_trials``, ``time_budget_s``,
        ``max_failed_trials``): it goes on as a new attempt."""
        return self._call("POST", f"/v1/sweeps/{sweep_id}/extend", json=budget)

    def upload_code(self, bundle: bytes) -> Json:
        """Send a code bundle (a zip: `sweeps.code.pack_directory`) with POST /v1/code:
        ``{"digest", "size", "files"}``."""
        headers = {"Content-Type": "application/zip"}
        return self._call("POST", "/v1/code", content=bundle, headers=headers)

    def me(self) -> Json:
        return self._call("GET", "/v1/me")

    def users(self) -> list[Json]:
        return self._list("/v1/users")

    def add_user(self, name: str, role: str, quotas: Json | None = None) -> Json:
        body: Json = {"name": name, "role": role}
        if quotas:
            body["quotas"] = quotas
        return self._call("POST", "/v1/users", json=body)

    def set_quotas(self, name: str, quotas: Json) -> Json:
        return self._call("PATCH", f"/v1/users/{name}/quotas", json=quotas)

    def tokens(self, name: str) -> list[Json]:
        return self._list(f"/v1/users/{name}/tokens")

    def issue_token(self, name: str, expires_at: str | None = None) -> Json:
        """A new token for the user: the answer's ``token`` is shown this once."""
        body = {"expires_at": expires_at} if expires_at else {}
        return self._call("POST", f"/v1/users/{name}/tokens", json=body)

    def revoke_token(self, name: str, token_id: str) -> Json:
        return self._call("DELETE", f"/v1/users/{name}/tokens/{token_id}")

    def sweep(self, sweep_id: str) -> Json:
        return self._call("GET", f"/v1/sweeps/{sweep_id}")

    def best(self, sweep_id: str) -> Json:
        """The sweep's objectives, its best and what that is (``basis``): ``{"objectives",
        "pareto", "basis", "best", "ensemble"}``."""
        return self._call("GET", f"/v1/sweeps/{sweep_id}/best")

    def spec(self, sweep_id: str) -> Json:
        """The spec the sweep runs under, as admitted, and its caps: ``{"sweep_id", "spec",
        "limits"}``."""
        return self._call("GET", f"/v1/sweeps/{sweep_id}/spec")

    def trial_page(self, sweep_id: str, **query: Any) -> Json:
        """One page of trials: ``{"items": [...], "next_cursor": ...}``; ``query`` takes the
        route's parameters (state, order_by, direction, limit, cursor)."""
        given = {key: value for key, value in query.items() if value is not None}
        return self._call("GET", f"/v1/sweeps/{sweep_id}/trials", params=given)

    def trials(self, sweep_id: str, **query: Any) -> list[Json]:
        """Every trial matching ``query``, following the pages."""
        found: list[Json] = []
        cursor = None
        while True:
            page = self.trial_page(sweep_id, **query, cursor=cursor)
            found.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    def wait(self, sweep_id: str, poll_s: float = 1.0, out: TextIO | None = None) -> Json:
        """Follow a sweep to its end, printing a progress line to ``out`` (sys.stderr as it is
        when called) whenever it changes."""
        out = out or sys.stderr
        # The sweep's first objective: the metric its best so far is ranked by (it never changes).
        objective = self.best(sweep_id)["objectives"][0]["metric"]
        last = ""
        while True:
            sweep = self.sweep(sweep_id)
            line = progress_line(sweep, objective)
            if line != last:
                print(line, file=out, flush=True)
                last = line
            if sweep["status"] in TERMINAL:
                return sweep
            time.sleep(poll_s)


def progress_line(sweep: Json, objective: str) -> str:
    """The line `wait` prints: the sweep's counts and its best, as its basis says: for several
    objectives the size of the Pareto set of its finished trials, for one the best so far by
    its ``objective`` (a metric name) in the words of the driver's own progress line."""
    line = f"[{sweep['name']}] {sweep['status']}: {counts_text(sweep['counts'])}"
    best_set = sweep.get("best") or []
    if sweep.get("best_basis") == PARETO_OF_FINISHED:
        names = ", ".join(trial["name"] for trial in best_set) or "none has finished"
        line += f" | {PARETO_OF_FINISHED}: {names}"
    elif best_set:
        # The store's best so far, or once the sweep ended, its best finished trial.
        best = best_set[0]
        text = best_so_far_text(objective, best["name"], best.get("metrics") or {})
        if text:
            line += f" | {text}"
    return line


def read_spec(path: str) -> dict[str, Any]:
    """The document in spec file `path`, read as `python -m sweeps validate` reads it.

    JSON or YAML with YAML 1.2's numbers (``1e-4`` is a float, not a string). Whether it is
    a valid spec is for the API to say; this only refuses what cannot be sent as one.
    """
    # Imported here: sweeps.spec.parse imports the spec module and through it gradreg and torch,
    # which a client that only posts JSON should not load.
    from sweeps.spec.errors import SpecError
    from sweeps.spec.parse import read_document

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SpecFileError(f"cannot read spec file {path}: {error}") from None
    try:
        document = read_document(text)
    except SpecError as error:
        problems = "; ".join(issue.message for issue in error.issues)
        raise SpecFileError(f"spec file {path}: {problems}") from None
    if not isinstance(document, dict):
        raise SpecFileError(f"spec file {path}: a spec is a mapping, got {type(document).__name__}")
    try:
        json.dumps(document, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise SpecFileError(
            f"spec file {path}: holds a value JSON cannot carry ({error})"
        ) from None
    return document


def with_code(document: Json, digest: str, path: str) -> Json:
    """The spec ``document`` (read from spec file ``path``) naming the code bundle ``digest``
    in its code section, which it keeps (its requirements); a copy. Refuses a code section
    that is not a mapping, or that names another bundle already."""
    code = document.get("code")
    if code is None:
        code = {}
    if not isinstance(code, dict):
        raise SpecFileError(
            f"spec file {path}: code is a mapping (requirements, digest), got {type(code).__name__}"
        )
    given = code.get("digest")
    if given is not None and given != digest:
        raise SpecFileError(
            f"spec file {path}: code.digest names the bundle {given}, and --code sends "
            f"{digest}: give one of them"
        )
    return {**document, "code": {**code, "digest": digest}}


def spec_text(answer: Json) -> str:
    """``GET /v1/sweeps/{id}/spec``'s answer as a YAML spec file: the caps it was admitted under
    are comments above the spec, so the text is a spec that `submit` takes."""
    # Imported here, as in read_spec: sweeps.spec.parse loads torch through the spec module.
    from sweeps.spec.parse import dump_document

    lines = [f"# sweep {answer['sweep_id']}: its spec as admitted, defaults filled in"]
    limits = answer.get("limits")
    if limits is None:
        lines.append("# admitted before the caps were kept: its driver uses its own environment's")
    else:
        caps = ", ".join(f"{name} {json.dumps(value)}" for name, value in limits.items())
        lines.append(f"# admitted under: {caps}")
    return "\n".join(lines) + "\n" + dump_document(answer["spec"], "yaml")


def describe(sweep: Json, trials: list[Json], best: Json) -> str:
    """What `status` and `submit --wait` print of a sweep: its status, its best by its objectives
    (``best``: the answer of `Client.best`), its links and its registered model."""
    lines = [f"sweep {sweep['id']} ({sweep['name']}): {sweep['status']}"]
    if sweep.get("reason"):
        lines.append(f"  reason: {sweep['reason']}")
    lines.append(f"  attempt {sweep['attempt']}, trials {sweep['counts']}")
    objectives = [objective["metric"] for objective in best["objectives"]]
    goals = ", ".join(f"{o['metric']} ({o['goal']})" for o in best["objectives"])
    which = "objectives" if len(objectives) > 1 else "objective"
    # A sweep stored before its best's basis was kept has none to say.
    basis = f"{best['basis']}; " if best.get("basis") else ""
    heading = f"  best ({basis}{which} {goals})"
    lines.append(f"{heading}:" if best["best"] else f"{heading}: none yet")
    for trial in best["best"]:
        metrics = trial.get("metrics") or {}
        values = ", ".join(f"{name} {_number(metrics.get(name))}" for name in objectives)
        others = ", ".join(
            f"{name} {_number(value)}"
            for name, value in metrics.items()
            if name not in objectives and name.startswith(("val_", "test_"))
        )
        lines.append(f"    {trial['name']} ({trial['state']}): {values}")
        lines.append(f"      params {trial['params']}" + (f"; also {others}" if others else ""))
    links = sweep["links"]
    if links.get("mlflow_experiment"):
        lines.append(f"  MLflow runs: {links['mlflow_experiment']}")
    if links.get("mlflow_parent_run"):
        lines.append(f"  MLflow parent run: {links['mlflow_parent_run']}")
    registered = sweep.get("registered_model")
    if registered:
        where = registered.get("uri") or f"not registered ({registered.get('error')})"
        lines.append(f"  registered model: {where}")
    lines.append(f"  {len(trials)} trial(s) listed at {links['trials']}")
    return "\n".join(lines)


def _number(value: Any) -> str:
    """A metric as `describe` prints it: 4 significant digits, or what it is when not a number
    (missing, or null where the store could not keep a NaN)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4g}"
    return "none" if value is None else str(value)
