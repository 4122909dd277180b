#!/opt/moto/bin/python
"""The MinIO client's commands that docker-compose.yml runs, against the moto stand-in.

    mc ready ALIAS                          the healthcheck: the S3 endpoint answers
    mc alias set ALIAS URL ACCESS SECRET    kept in $MC_CONFIG_DIR/config.json (~/.mc)
    mc mb [--ignore-existing|-p] ALIAS/BUCKET

`local` is http://127.0.0.1:9000, as in the real client. `mc admin` (users, policies) is
MinIO's own API, which moto does not have: it fails, naming docker/podman.yml, which gives
minio-init the part of its command that the stand-in runs.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

LOCAL = {"url": "http://127.0.0.1:9000", "accessKey": "", "secretKey": ""}


def _config_file() -> Path:
    return Path(os.environ.get("MC_CONFIG_DIR") or Path.home() / ".mc") / "config.json"


def _aliases() -> dict[str, dict[str, str]]:
    path = _config_file()
    saved = json.loads(path.read_text())["aliases"] if path.exists() else {}
    return {"local": LOCAL, **saved}


def _alias(name: str) -> dict[str, str]:
    aliases = _aliases()
    if name not in aliases:
        raise SystemExit(f"mc: no alias {name!r} (mc alias set {name} URL ACCESS SECRET)")
    return aliases[name]


def ready(name: str) -> int:
    try:
        with urllib.request.urlopen(_alias(name)["url"] + "/", timeout=5):
            return 0
    except urllib.error.HTTPError as error:  # answered: it is up
        return 0 if error.code < 500 else 1
    except OSError as error:
        print(f"mc ready {name}: {error}", file=sys.stderr)
        return 1


def alias_set(name: str, url: str, access: str, secret: str) -> int:
    path = _config_file()
    saved = json.loads(path.read_text())["aliases"] if path.exists() else {}
    saved[name] = {"url": url.rstrip("/"), "accessKey": access, "secretKey": secret}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "10", "aliases": saved}))
    print(f"Added `{name}` successfully.")
    return 0


def make_bucket(target: str, ignore_existing: bool) -> int:
    import boto3

    name, _, bucket = target.partition("/")
    if not bucket or "/" in bucket:
        raise SystemExit(f"mc mb: {target!r} is not ALIAS/BUCKET")
    alias = _alias(name)
    client = boto3.client(
        "s3",
        endpoint_url=alias["url"],
        aws_access_key_id=alias["accessKey"] or "stand-in",
        aws_secret_access_key=alias["secretKey"] or "stand-in",
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    # Asked first: in us-east-1, S3 (and moto) answer 200 to creating a bucket one owns.
    if bucket in {entry["Name"] for entry in client.list_buckets()["Buckets"]}:
        if not ignore_existing:
            raise SystemExit(f"mc mb: bucket {bucket} exists (--ignore-existing accepts that)")
        print(f"Bucket `{target}` exists already.")
        return 0
    client.create_bucket(Bucket=bucket)
    print(f"Bucket created successfully `{target}`.")
    return 0


def main(argv: list[str]) -> int:
    match argv:
        case ["ready", name]:
            return ready(name)
        case ["alias", "set", name, url, access, secret]:
            return alias_set(name, url, access, secret)
        case ["mb", *flags, target] if set(flags) <= {"--ignore-existing", "-p"}:
            return make_bucket(target, ignore_existing=bool(flags))
        case ["admin", *_]:
            print(
                "mc stand-in: `mc admin` is MinIO's administration API (users, policies), which "
                "moto's S3 server does not have; docker/podman.yml runs minio-init without it",
                file=sys.stderr,
            )
            return 2
    print(f"mc stand-in: `mc {' '.join(argv)}` is not one of the commands it runs", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
