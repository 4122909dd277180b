"""python -m service [serve] | submit SPEC [--code DIR] [--wait] | status ID | spec ID [--json]
| extend ID | me | users list|add|token|revoke|quotas"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from gradreg.files import write_private
from gradreg.version import add_version_argument, interruptible
from service.quotas import QUOTA_NAMES
from service.settings import ClientSettings, ServiceSettings, prepare_ray_auth

if TYPE_CHECKING:
    from service.client import Client

TOKEN_FILE = "api_token"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in (None, "serve"):
        return interruptible("service", lambda: serve_command(args))
    return interruptible("service", lambda: client_command(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    add_version_argument(parser)
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the API (the default)")
    _add_serve_arguments(serve)
    submit = commands.add_parser("submit", help="post a sweep spec")
    submit.add_argument("spec")
    submit.add_argument("--wait", action="store_true", help="follow it to the end")
    submit.add_argument(
        "--code",
        metavar="DIR",
        help="your code directory (the model and dataset entry points' modules): packed, "
        "uploaded with POST /v1/code, and named in the spec's code.digest",
    )
    submit.add_argument("--idempotency-key")
    status = commands.add_parser("status", help="print a sweep and its best trials")
    status.add_argument("sweep_id")
    extend = commands.add_parser(
        "extend", help="give a sweep that ended more budget: it goes on as a new attempt"
    )
    extend.add_argument("sweep_id")
    extend.add_argument("--max-trials", type=int, help="trials in all, earlier ones included")
    extend.add_argument("--time-budget-s", type=float, help="seconds the next attempt may run")
    extend.add_argument("--max-failed-trials", type=int)
    extend.add_argument("--wait", action="store_true", help="follow it to the end")
    spec = commands.add_parser(
        "spec", help="print the spec a sweep runs under, as admitted, and the caps it was under"
    )
    spec.add_argument("sweep_id")
    spec.add_argument(
        "--json",
        action="store_true",
        help="print the API's answer (spec and caps) as JSON "
        "(default: the spec as YAML, which submit takes, with the caps as comments)",
    )
    me = commands.add_parser("me", help="who your token is: user, role, quotas")
    users = commands.add_parser("users", help="users and their tokens (an admin's)")
    user_commands = users.add_subparsers(dest="users_command", required=True)
    user_commands.add_parser("list", help="every user, their role and quotas")
    add = user_commands.add_parser("add", help="a new user (a member unless --admin)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true")
    quotas = user_commands.add_parser(
        "quotas", help="set a user's own quotas (0 or more flags; see GRADREG_QUOTA_*)"
    )
    quotas.add_argument("name")
    for parser_with_quotas in (add, quotas):
        for quota in QUOTA_NAMES:
            kind = float if quota == "gpus" else int
            parser_with_quotas.add_argument(f"--{quota.replace('_', '-')}", type=kind)
    token = user_commands.add_parser("token", help="issue a token (printed once)")
    token.add_argument("name")
    token.add_argument("--expires-at", help="ISO 8601 time it stops working, e.g. 2027-01-31")
    revoke = user_commands.add_parser("revoke", help="revoke a token: it gets 401 from now")
    revoke.add_argument("name")
    revoke.add_argument("token_id")
    tokens = user_commands.add_parser("tokens", help="a user's tokens (never the tokens)")
    tokens.add_argument("name")
    client = ClientSettings()
    fallback = ClientSettings.model_fields["url"].default
    for sub in (submit, status, extend, spec, me, *user_commands.choices.values()):
        sub.add_argument(
            "--url", default=client.url, help=f"default: $GRADREG_API_URL, else {fallback}"
        )
        sub.add_argument(
            "--token",
            default=client.token,
            help=f"default: $GRADREG_API_TOKEN, else the one in var/{TOKEN_FILE}",
        )
    return parser


def _add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", help="address to listen on (default: $GRADREG_HOST or 127.0.0.1)")
    serve.add_argument(
        "--port", type=_port, help="port to listen on, 1-65535 (default: $GRADREG_PORT or 8000)"
    )
    serve.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default="info",
        help="uvicorn's and the root logger's level (default: %(default)s)",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is outside 1-65535")
    return port


def settings_from_args(args: argparse.Namespace) -> ServiceSettings:
    """The settings from the environment (GRADREG_*), with the flags given put over them.

    Flags are passed as init arguments, so they go through the same validators as the
    environment. Raises pydantic's ValidationError.
    """
    flags = {"host": getattr(args, "host", None), "port": getattr(args, "port", None)}
    return ServiceSettings(**{name: value for name, value in flags.items() if value is not None})


def serve_command(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as error:
        problems = "\n".join(
            f"  GRADREG_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors()
        )
        print(f"error: invalid settings:\n{problems}", file=sys.stderr)
        return EXIT_INVALID
    return serve(settings, getattr(args, "log_level", "info"))


def serve(settings: ServiceSettings, log_level: str = "info") -> int:
    # Checked before anything is written or started: a refused address leaves no trace.
    try:
        settings.check_listen_address()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    prepare_ray_auth(settings.resolved_token_path())
    import uvicorn

    from service.app import create_app

    if not settings.tokens:
        token = _generated_token(settings.var_dir)
        settings = settings.model_copy(update={"api_tokens": token})
        # Where, not what: stdout may be a log file others can read (`make demo` keeps one).
        print(f"API token in {(settings.var_dir / TOKEN_FILE).absolute()} (owner-only)", flush=True)
    logging.getLogger().setLevel(log_level.upper())
    try:
        uvicorn.run(
            create_app(settings), host=settings.host, port=settings.port, log_level=log_level
        )
    except SystemExit as stop:
        # uvicorn exits 3 when it cannot start (port taken, start-up failed); ours is 1.
        return EXIT_FAILURE if stop.code else EXIT_OK
    return EXIT_OK


def _generated_token(var_dir: Path) -> str:
    """One token for a loopback-only server without configured tokens, kept across restarts."""
    path = var_dir / TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n", exclusive=True)
    return token


def client_command(args: argparse.Namespace) -> int:
    import httpx

    from service.client import ApiError, Client, SpecFileError, describe, read_spec, spec_text

    token = args.token
    if not token and Path("var", TOKEN_FILE).exists():
        token = Path("var", TOKEN_FILE).read_text().strip()
    if not token:
        print("error: give --token or set GRADREG_API_TOKEN", file=sys.stderr)
        return EXIT_INVALID
    client = Client(args.url, token)
    try:
        if args.command in ("me", "users"):
            print(json.dumps(_account_command(client, args), indent=2))
            return EXIT_OK
        if args.command == "spec":
            answer = client.spec(args.sweep_id)
            text = json.dumps(answer, indent=2) + "\n" if args.json else spec_text(answer)
            print(text, end="")
            return EXIT_OK
        if args.command == "submit":
            document = read_spec(args.spec)
            if args.code is not None:
                document = _with_uploaded_code(client, document, args.spec, args.code)
            sweep = client.submit(document, args.idempotency_key)
            print(f"submitted {sweep['id']} ({sweep['name']})", flush=True)
            if args.wait:
                sweep = client.wait(sweep["id"])
        elif args.command == "extend":
            names = ("max_trials", "time_budget_s", "max_failed_trials")
            budget = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
            sweep = client.extend(args.sweep_id, budget)
            print(f"extended {sweep['id']}: {sweep['reason']}", flush=True)
            if args.wait:
                sweep = client.wait(sweep["id"])
        else:
            sweep = client.sweep(args.sweep_id)
        print(describe(sweep, client.trials(sweep["id"]), client.best(sweep["id"])))
    except ApiError as error:
        print(f"error: {error}", file=sys.stderr)
        # the request was wrong (4xx), or the service failed to answer it (5xx)
        return EXIT_FAILURE if error.status >= 500 else EXIT_INVALID
    except (SpecFileError, CodeDirectoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except httpx.TransportError as error:
        print(f"error: cannot reach the API at {args.url}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_FAILURE if sweep["status"] == "failed" else EXIT_OK


def _account_command(client: Client, args: argparse.Namespace) -> object:
    """`me` and `users ...`: the API's answer, printed as JSON."""
    if args.command == "me":
        return client.me()
    command = args.users_command
    if command == "list":
        return client.users()
    if command == "tokens":
        return client.tokens(args.name)
    if command == "token":
        return client.issue_token(args.name, args.expires_at)
    if command == "revoke":
        return client.revoke_token(args.name, args.token_id)
    given = {name: getattr(args, name) for name in QUOTA_NAMES if getattr(args, name) is not None}
    if command == "add":
        return client.add_user(args.name, "admin" if args.admin else "member", given)
    return client.set_quotas(args.name, given)


class CodeDirectoryError(ValueError):
    """A --code directory that cannot be packed (missing, empty, a symlink inside)."""


def _with_uploaded_code(client: Client, document: dict, spec_path: str, code_dir: str) -> dict:
    """Pack ``code_dir``, upload it, and return the spec naming the bundle's digest."""
    from service.client import with_code
    from sweeps.code import pack_directory

    try:
        bundle = pack_directory(Path(code_dir))
    except (ValueError, OSError) as error:
        raise CodeDirectoryError(f"--code {code_dir}: {error}") from None
    answer = client.upload_code(bundle)
    print(
        f"uploaded {code_dir}: {answer['digest']} ({answer['files']} files, "
        f"{answer['size']} bytes)",
        flush=True,
    )
    return with_code(document, answer["digest"], spec_path)


if __name__ == "__main__":
    sys.exit(main())
