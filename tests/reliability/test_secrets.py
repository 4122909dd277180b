"""Where the service's secrets go: API tokens and the store's password stay with the API.

Each test starts its own API: the shared reliability service has tokens configured and a
password-free store URL, so it could not show these.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.demo import submit_command
from service.redaction import REDACTED, RedactTokens
from tests.helpers.api import FINAL, ApiProcess, small_sweep, wait_for

pytestmark = pytest.mark.slow
PASSWORD = "pw-that-must-not-leak"


def test_without_tokens_a_non_loopback_address_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GRADREG_API_TOKENS"}
    env.update({"GRADREG_HOST": "0.0.0.0", "GRADREG_VAR_DIR": str(tmp_path / "var")})
    done = subprocess.run(
        [sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API tokens" in done.stderr


def test_a_generated_token_is_owner_only_and_never_printed(tmp_path):
    api = ApiProcess(tmp_path, extra_env={"GRADREG_API_TOKENS": None}).start()
    try:
        token_file = api.var_dir / "api_token"
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        with api.client(token) as client:
            assert client.get("/v1/sweeps").status_code == 200
        log = api.log_tail(10**8)
        assert str(token_file) in log and token not in log
    finally:
        api.stop()
    assert all(token not in part for part in submit_command(sys.executable, "spec.yaml"))


def test_the_head_and_the_jobs_never_see_the_tokens_or_the_store_password(tmp_path, own_store_url):
    with_password = own_store_url.set(password=PASSWORD)  # trust auth ignores it
    api = ApiProcess(
        tmp_path,
        extra_env={"GRADREG_DATABASE_URL": with_password.render_as_string(hide_password=False)},
    ).start()
    try:
        with api.client() as client:
            spec = small_sweep("secrets", trials=1, concurrent=1)
            sweep_id = client.post("/v1/sweeps", json=spec).json()["id"]
            done = wait_for(client, sweep_id, lambda s: s["status"] in FINAL, timeout_s=180)
        # the driver found the store
        assert done["status"] == "succeeded", f"{done['reason']}\n{api.log_tail(4000)}"
        head = api.head_state()
        environ = Path(f"/proc/{head['pid']}/environ").read_bytes().decode(errors="replace")
        assert "GRADREG_API_TOKENS" not in environ and PASSWORD not in environ
        # What anyone holding the Ray token can read about the jobs: no password in it.
        listing = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from ray.job_submission import JobSubmissionClient as C; "
                "print([j.runtime_env for j in C(sys.argv[1]).list_jobs()])",
                head["dashboard_url"],
            ],
            env={
                **os.environ,
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(api.var_dir / "ray" / "auth_token"),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "GRADREG_TRACKING_URI" in listing.stdout, listing.stderr
        assert PASSWORD not in listing.stdout
        secret = api.var_dir / "secrets" / "database_url"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    finally:
        api.stop()


def test_redaction_covers_exceptions_and_percent_encoded_tokens():
    token = "tok/en+with=odd&chars"
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(RedactTokens([token]))
    log = logging.getLogger("test-redaction")
    log.addHandler(handler)
    try:
        try:
            raise RuntimeError(f"bad request to /v1?token={token}")
        except RuntimeError:
            log.exception("failed for %s", httpx.URL("http://x/", params={"t": token}))
    finally:
        log.removeHandler(handler)
    (text,) = records
    assert token not in text and "tok%2Fen%2Bwith%3Dodd%26chars" not in text
    assert text.count(REDACTED) >= 2 and "RuntimeError" in text
