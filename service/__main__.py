"""python -m service [serve] | submit SPEC [--wait] | status ID"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from service.settings import ServiceSettings, prepare_ray_auth

TOKEN_FILE = "api_token"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the API (the default)")
    submit = commands.add_parser("submit", help="post a sweep spec")
    submit.add_argument("spec")
    submit.add_argument("--wait", action="store_true", help="follow it to the end")
    submit.add_argument("--idempotency-key")
    status = commands.add_parser("status", help="print a sweep and its best trials")
    status.add_argument("sweep_id")
    for sub in (submit, status):
        sub.add_argument(
            "--url", default=os.environ.get("GRADREG_API_URL", "http://127.0.0.1:8000")
        )
        sub.add_argument("--token", default=os.environ.get("GRADREG_API_TOKEN"))
    args = parser.parse_args(argv)
    if args.command in (None, "serve"):
        return serve(ServiceSettings())
    return client_command(args)


def serve(settings: ServiceSettings) -> int:
    prepare_ray_auth(settings.resolved_token_path())
    import uvicorn

    from service.app import create_app

    try:
        settings.check_listen_address()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not settings.tokens:
        token = _generated_token(settings.var_dir)
        settings = settings.model_copy(update={"api_tokens": token})
        # Where, not what: stdout may be a log file others can read (`make demo` keeps one).
        print(f"API token in {(settings.var_dir / TOKEN_FILE).absolute()} (owner-only)", flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0


def _generated_token(var_dir: Path) -> str:
    """One token for a loopback-only server without configured tokens, kept across restarts."""
    path = var_dir / TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    var_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    return token


def client_command(args: argparse.Namespace) -> int:
    from service.client import ApiError, Client, SpecFileError, describe, read_spec

    token = args.token
    if not token and Path("var", TOKEN_FILE).exists():
        token = Path("var", TOKEN_FILE).read_text().strip()
    if not token:
        print("error: give --token or set GRADREG_API_TOKEN", file=sys.stderr)
        return 2
    client = Client(args.url, token)
    try:
        if args.command == "submit":
            sweep = client.submit(read_spec(args.spec), args.idempotency_key)
            print(f"submitted {sweep['id']} ({sweep['name']})", flush=True)
            if args.wait:
                sweep = client.wait(sweep["id"])
        else:
            sweep = client.sweep(args.sweep_id)
        print(describe(sweep, client.trials(sweep["id"])))
    except (ApiError, SpecFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if sweep["status"] != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
