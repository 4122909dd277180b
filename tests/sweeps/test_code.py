"""sweeps.code: a code directory packed deterministically, a bundle's checks (each refusal names
its entry), safe unpacking and the Ray runtime environment."""

from __future__ import annotations

import io
import os
import pickle
import stat
import warnings
import zipfile
from pathlib import Path

import pytest

from sweeps.code import (
    DIGEST_PATTERN,
    MAX_EXPANSION,
    BundleError,
    BundleInfo,
    CodeBundle,
    check_bundle,
    digest_of,
    is_digest,
    pack_directory,
    runtime_env,
    unpack_bundle,
)

CAPS = {"max_bytes": 1 << 20, "max_files": 50}


def make_tree(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "model.py").write_text("def build(input_shape, n_classes):\n    return None\n")
    (root / "pkg" / "sub" / "data.csv").write_text("a,b\n1,2\n")
    (root / "top.py").write_text("X = 1\n")
    return root


def raw_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name; we mean it
        for name, content in entries:
            archive.writestr(name, content)
    return buffer.getvalue()


def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


# --- digests -----------------------------------------------------------------------------


def test_digest_is_sha256_of_the_bytes_and_matches_the_pattern() -> None:
    digest = digest_of(b"abc")
    assert digest == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert is_digest(digest)
    assert DIGEST_PATTERN == r"^sha256:[0-9a-f]{64}$"
    assert not is_digest("sha256:" + "A" * 64)
    assert not is_digest("md5:" + "a" * 64)


# --- packing -----------------------------------------------------------------------------


def test_pack_is_deterministic_across_calls_and_mtimes_and_modes(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "src")
    first = pack_directory(root)
    assert pack_directory(root) == first
    os.utime(root / "top.py", (1_000_000, 1_000_000))
    (root / "pkg" / "model.py").chmod(0o755)
    assert pack_directory(root) == first
    (root / "top.py").write_text("X = 2\n")
    assert pack_directory(root) != first


def test_pack_is_the_same_for_a_copy_made_in_another_order(tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a")
    b = tmp_path / "b"
    (b / "pkg" / "sub").mkdir(parents=True)
    for name in ("top.py", "pkg/sub/data.csv", "pkg/model.py", "pkg/__init__.py"):
        (b / name).write_bytes((a / name).read_bytes())
    assert pack_directory(a) == pack_directory(b)


def test_pack_leaves_out_bytecode_and_hidden_and_tool_directories(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "src")
    for skipped in ("__pycache__", ".git", ".venv", ".hidden"):
        (root / "pkg" / skipped).mkdir()
        (root / "pkg" / skipped / "x.py").write_text("")
    (root / "pkg" / "model.cpython-311.pyc").write_bytes(b"\0")
    with zipfile.ZipFile(io.BytesIO(pack_directory(root))) as archive:
        names = archive.namelist()
        modes = {info.external_attr >> 16 for info in archive.infolist()}
        times = {info.date_time for info in archive.infolist()}
    assert names == ["pkg/__init__.py", "pkg/model.py", "pkg/sub/data.csv", "top.py"]
    assert modes == {stat.S_IFREG | 0o644}
    assert times == {(1980, 1, 1, 0, 0, 0)}


def test_pack_refuses_a_symlink_naming_it(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "src")
    (root / "pkg" / "link.py").symlink_to(root / "top.py")
    with pytest.raises(ValueError, match=r"symlink, 'pkg/link.py'"):
        pack_directory(root)


def test_pack_refuses_a_missing_or_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        pack_directory(tmp_path / "missing")
    (tmp_path / "empty" / "__pycache__").mkdir(parents=True)
    (tmp_path / "empty" / "__pycache__" / "x.pyc").write_bytes(b"")
    with pytest.raises(ValueError, match="holds no files"):
        pack_directory(tmp_path / "empty")


def test_a_packed_directory_passes_its_checks_and_unpacks_to_the_same_files(
    tmp_path: Path,
) -> None:
    root = make_tree(tmp_path / "src")
    data = pack_directory(root)
    assert check_bundle(data, **CAPS) == BundleInfo(digest_of(data), len(data), 4)
    out = unpack_bundle(data, tmp_path / "out")
    unpacked = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert unpacked == ["pkg/__init__.py", "pkg/model.py", "pkg/sub/data.csv", "top.py"]
    for name in unpacked:
        assert (out / name).read_bytes() == (root / name).read_bytes()


# --- check_bundle: each refusal names its entry --------------------------------------------


@pytest.mark.parametrize(
    ("entries", "entry", "message"),
    [
        ([("/etc/passwd", b"x")], "/etc/passwd", "is an absolute path"),
        ([("C:/x.py", b"x")], "C:/x.py", "is an absolute path"),
        ([("pkg/../../evil.py", b"x")], "pkg/../../evil.py", "'..' component"),
        ([("../evil.py", b"x")], "../evil.py", "'..' component"),
        ([("pkg\\..\\evil.py", b"x")], "pkg\\..\\evil.py", "backslash"),
        ([("pkg//a.py", b"x")], "pkg//a.py", "empty or '.' component"),
        ([("pkg/./a.py", b"x")], "pkg/./a.py", "empty or '.' component"),
        ([("a.py", b"1"), ("a.py", b"2")], "a.py", "appears twice"),
        ([("pkg", b"1"), ("pkg/a.py", b"2")], "pkg", "is a file and also a directory"),
        ([symlink_entry("pkg/link.py", "/etc/passwd")], "pkg/link.py", "is a symlink"),
    ],
)
def test_check_bundle_refuses_an_unsafe_entry_naming_it(
    entries: list[tuple[str | zipfile.ZipInfo, bytes]], entry: str, message: str
) -> None:
    data = raw_zip(entries)
    with pytest.raises(BundleError, match=message) as caught:
        check_bundle(data, **CAPS)
    assert caught.value.entry == entry
    assert repr(entry) in str(caught.value)


def test_check_bundle_refuses_a_name_with_nul() -> None:
    # zipfile cuts a name at NUL when it writes one, so put the NUL in the bytes.
    data = raw_zip([("aZ.py", b"x")]).replace(b"aZ.py", b"a\x00.py")
    with pytest.raises(BundleError, match="NUL") as caught:
        check_bundle(data, **CAPS)
    assert caught.value.entry == "a\x00.py"


def test_check_bundle_refuses_a_name_that_is_not_valid_utf8() -> None:
    data = bytearray(raw_zip([("abc.py", b"x")]))
    # Mark the name UTF-8 (flag bit 11) in the central directory and corrupt its first byte.
    central = data.rfind(b"PK\x01\x02")
    flags = int.from_bytes(data[central + 8 : central + 10], "little") | 0x800
    data[central + 8 : central + 10] = flags.to_bytes(2, "little")
    data[central + 46] = 0xFF
    with pytest.raises(BundleError, match="not valid UTF-8"):
        check_bundle(bytes(data), **CAPS)


def test_check_bundle_refuses_a_non_ascii_name_not_marked_utf8() -> None:
    data = bytearray(raw_zip([("abc.py", b"x")]))
    central = data.rfind(b"PK\x01\x02")
    data[central + 46] = 0xE9  # cp437, flag bit 11 unset
    with pytest.raises(BundleError, match="not marked UTF-8") as caught:
        check_bundle(bytes(data), **CAPS)
    assert caught.value.entry is not None and caught.value.entry.endswith("bc.py")


def test_check_bundle_accepts_a_utf8_name() -> None:
    data = raw_zip([("données.py", b"x")])
    assert check_bundle(data, **CAPS).files == 1


def test_check_bundle_refuses_what_is_not_a_zip() -> None:
    with pytest.raises(BundleError, match="not a zip file") as caught:
        check_bundle(b"definitely not a zip", **CAPS)
    assert caught.value.entry is None


def test_check_bundle_refuses_a_bundle_over_the_size_cap() -> None:
    data = raw_zip([("a.py", os.urandom(4096))])
    assert check_bundle(data, max_bytes=len(data), max_files=5).size == len(data)
    with pytest.raises(BundleError, match=rf"{len(data)} bytes, over the cap of 1000") as caught:
        check_bundle(data, max_bytes=1000, max_files=5)
    assert caught.value.entry is None


def test_check_bundle_refuses_too_many_files_counting_files_not_directories() -> None:
    data = raw_zip([("pkg/", b""), *((f"pkg/m{i}.py", b"") for i in range(3))])
    assert check_bundle(data, max_bytes=1 << 20, max_files=3).files == 3
    with pytest.raises(BundleError, match="holds 3 files, over the cap of 2") as caught:
        check_bundle(data, max_bytes=1 << 20, max_files=2)
    assert caught.value.entry is None


def zip_bomb(unpacked: int) -> bytes:
    buffer = io.BytesIO()
    chunk = bytes(1 << 20)
    with (
        zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("zeros.bin", "w", force_zip64=True) as sink,
    ):
        for _ in range(unpacked // len(chunk)):
            sink.write(chunk)
    return buffer.getvalue()


def test_check_bundle_refuses_a_zip_bomb_by_its_expansion() -> None:
    # A legitimate bundle may expand to MAX_EXPANSION times 1 MiB (the floor) whatever its size;
    # one of zeros that expands beyond it is refused although it is far under the size cap.
    data = zip_bomb((MAX_EXPANSION + 1) << 20)
    assert len(data) < 1 << 20
    with pytest.raises(BundleError, match="zip bomb") as caught:
        check_bundle(data, max_bytes=1 << 20, max_files=5)
    assert caught.value.entry is None
    assert check_bundle(zip_bomb(8 << 20), max_bytes=1 << 20, max_files=5).files == 1


def test_bundle_error_pickles_with_its_entry() -> None:
    error = pickle.loads(pickle.dumps(BundleError("bad", "pkg/x.py")))
    assert (str(error), error.entry) == ("bad", "pkg/x.py")


# --- unpacking -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entries",
    [
        [("../evil.py", b"x")],
        [("/tmp/evil.py", b"x")],
        [("ok.py", b"x"), symlink_entry("link", "..")],
        [("pkg/../../evil.py", b"x")],
    ],
)
def test_unpack_never_writes_outside_its_directory(
    tmp_path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]
) -> None:
    into = tmp_path / "deep" / "into"
    with pytest.raises(BundleError):
        unpack_bundle(raw_zip(entries), into)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert written == ["deep", "deep/into"]
    assert not Path("/tmp/evil.py").exists()


def test_unpack_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "into").mkdir()
    (tmp_path / "into" / "x").write_text("")
    with pytest.raises(ValueError, match="not an empty directory"):
        unpack_bundle(raw_zip([("a.py", b"")]), tmp_path / "into")


def test_unpack_refuses_an_entry_whose_bytes_do_not_match_its_header(tmp_path: Path) -> None:
    data = bytearray(raw_zip([("a.py", b"print('hello')\n")]))
    data[data.find(b"print")] = ord("P")  # stored, so the content is there to corrupt
    with pytest.raises(BundleError, match="cannot be unpacked") as caught:
        unpack_bundle(bytes(data), tmp_path / "into")
    assert caught.value.entry == "a.py"


# --- the runtime environment ----------------------------------------------------------------


def test_runtime_env_has_pip_and_env_vars_only_when_given(tmp_path: Path) -> None:
    assert runtime_env(tmp_path / "b.zip") == {"working_dir": str(tmp_path / "b.zip")}
    env = runtime_env("/x/b.zip", ["einops==0.8.2", "/w/t-1.0-py3-none-any.whl"], {"A": "1"})
    assert env == {
        "working_dir": "/x/b.zip",
        "pip": {"packages": ["einops==0.8.2", "/w/t-1.0-py3-none-any.whl"], "pip_check": False},
        "env_vars": {"A": "1"},
    }


def test_code_bundle_names_its_file_by_digest_and_lists_its_top_level_modules(
    tmp_path: Path,
) -> None:
    root = make_tree(tmp_path / "src")
    (root / "not-a-module").mkdir()
    (root / "not-a-module" / "x.txt").write_text("")
    (root / "README.md").write_text("")
    bundle = CodeBundle.pack(root)
    assert bundle.data == pack_directory(root) and bundle.source == str(root)
    assert bundle.file_name == bundle.digest.removeprefix("sha256:") + ".zip"
    assert bundle.modules() == ("pkg", "top")
