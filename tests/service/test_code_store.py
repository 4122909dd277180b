"""The code store: bundles kept by digest in a directory (owner-only, whole or not at all) or
in a bucket (moto's S3 server on loopback, through pyarrow.fs as Ray Tune's storage is read),
and the local copy the launcher hands Ray."""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.code_store import CodeBundleMissing, CodeStore, bundle_name
from service.launcher import free_port
from sweeps.code import digest_of, pack_directory
from tests.helpers import poll_until

BUCKET = "gradreg-code-test"


def bundle(tmp_path: Path, text: str = "def build(): ...\n") -> bytes:
    source = tmp_path / f"src-{abs(hash(text))}"
    (source / "mynets").mkdir(parents=True, exist_ok=True)
    (source / "mynets" / "net.py").write_text(text)
    return pack_directory(source)


def test_a_directory_keeps_each_bundle_by_digest_owner_only(tmp_path):
    store = CodeStore(str(tmp_path / "code"), tmp_path / "cache")
    data = bundle(tmp_path)
    digest = store.put(data)
    assert digest == digest_of(data)
    path = store.local_path(digest)
    assert path == tmp_path / "code" / f"{digest.removeprefix('sha256:')}.zip"
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.exists(digest) and store.size(digest) == len(data)
    # Idempotent: the same bytes again are the same bundle, and nothing else is written.
    assert store.put(data) == digest
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert not (tmp_path / "cache").exists()  # a directory's bundles need no copy


def test_a_bundle_the_store_lacks_is_named(tmp_path):
    store = CodeStore(str(tmp_path / "code"), tmp_path / "cache")
    digest = "sha256:" + "0" * 64
    assert not store.exists(digest) and store.size(digest) is None
    with pytest.raises(CodeBundleMissing, match=f"no code bundle {digest}; upload it"):
        store.local_path(digest)


@pytest.mark.parametrize(
    "digest", ["sha256:../../etc/passwd", "sha256:" + "A" * 64, "md5:" + "0" * 32, "0" * 64]
)
def test_only_a_digest_becomes_a_file_name(digest):
    with pytest.raises(ValueError, match="not a code bundle digest"):
        bundle_name(digest)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback, with the bucket."""
    import boto3

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )

    def bucket_made() -> bool:
        assert server.poll() is None, "moto's server exited"
        try:
            client.create_bucket(Bucket=BUCKET)
        except Exception:
            return False
        return True

    try:
        poll_until(bucket_made, 60, "moto's S3 server making the bucket", 0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def bucket_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The AWS_* variables a deployment sets (compose's), read by pyarrow.fs."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    return s3_endpoint


def test_a_bucket_keeps_bundles_and_the_launcher_gets_a_checked_local_copy(tmp_path, bucket_env):
    import boto3

    store = CodeStore(f"s3://{BUCKET}/code", tmp_path / "cache")
    data = bundle(tmp_path)
    digest = store.put(data)
    key = f"code/{bundle_name(digest)}"
    s3 = boto3.client("s3", endpoint_url=bucket_env)
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
    assert store.exists(digest) and store.size(digest) == len(data)
    assert store.put(data) == digest  # idempotent
    # A second API process (a restart) sees the same bundle.
    assert CodeStore(f"s3://{BUCKET}/code", tmp_path / "other").exists(digest)

    local = store.local_path(digest)
    assert local == tmp_path / "cache" / bundle_name(digest)
    assert local.read_bytes() == data and stat.S_IMODE(local.stat().st_mode) == 0o600
    # Read once: the copy is what later attempts get, without asking the bucket.
    s3.delete_object(Bucket=BUCKET, Key=key)
    assert not store.exists(digest)
    assert store.local_path(digest) == local


def test_a_bucket_object_changed_after_it_was_stored_is_refused(tmp_path, bucket_env):
    import boto3

    store = CodeStore(f"s3://{BUCKET}/code", tmp_path / "cache")
    data = bundle(tmp_path, "def build(): return 1\n")
    digest = store.put(data)
    boto3.client("s3", endpoint_url=bucket_env).put_object(
        Bucket=BUCKET, Key=f"code/{bundle_name(digest)}", Body=b"something else"
    )
    with pytest.raises(ValueError, match=f"code bundle {digest} in s3://.* reads as sha256:"):
        store.local_path(digest)
    assert not (tmp_path / "cache" / bundle_name(digest)).exists()


def test_a_bucket_without_the_bundle_says_so(tmp_path, bucket_env):
    store = CodeStore(f"s3://{BUCKET}/elsewhere", tmp_path / "cache")
    digest = "sha256:" + "1" * 64
    assert not store.exists(digest)
    with pytest.raises(CodeBundleMissing, match=digest):
        store.local_path(digest)
