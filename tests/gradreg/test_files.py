"""Files written whole or not at all (gradreg.files): atomic replace, owner-only write."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gradreg.files import PRIVATE, SHARED, replace_atomically, write_private


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_replace_writes_the_new_file_with_its_mode_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    replace_atomically(target, lambda handle: handle.write(b"new"))
    assert target.read_bytes() == b"new"
    assert mode_of(target) == SHARED
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


@pytest.mark.parametrize("where", ["write", "check"])
def test_a_failed_replace_keeps_the_old_file_and_removes_the_temporary_one(tmp_path, where):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    seen: list[bytes] = []

    def write(handle):
        handle.write(b"half")
        if where == "write":
            raise OSError("disk full")

    def check(path: Path) -> None:
        seen.append(path.read_bytes())  # the check reads the finished temporary file
        raise ValueError("not the pinned file")

    with pytest.raises(OSError if where == "write" else ValueError):
        replace_atomically(target, write, check=check)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]
    assert seen == ([] if where == "write" else [b"half"])


def test_an_exclusive_write_never_replaces(tmp_path):
    target = tmp_path / "token"
    replace_atomically(target, lambda handle: handle.write(b"first"), exclusive=True)
    with pytest.raises(FileExistsError):
        replace_atomically(target, lambda handle: handle.write(b"second"), exclusive=True)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["token"]


def test_write_private_is_owner_only_and_makes_its_folder(tmp_path):
    target = tmp_path / "var" / "secret"
    assert write_private(target, "s3cret\n") == target
    assert target.read_text() == "s3cret\n"
    assert mode_of(target) == PRIVATE == 0o600
    # replacing a world-readable file leaves it owner-only too
    target.chmod(0o644)
    write_private(target, "other\n")
    assert (target.read_text(), mode_of(target)) == ("other\n", 0o600)
    with pytest.raises(FileExistsError):
        write_private(target, "third\n", exclusive=True)
    assert target.read_text() == "other\n"
