"""The files a sweep keeps beside Tune's experiment state, locally or in a bucket.

    EXPERIMENT/sweep.json          the `SweepRecord`: what `resume NAME` needs besides Tune
    EXPERIMENT/trial_states.json   each trial's final state (succeeded, stopped, failed)

EXPERIMENT is ``<storage>/<sweep name>``, a path or a URI such as ``s3://bucket/prefix/name``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import pyarrow.fs

from sweeps.records import SweepRecord

SWEEP_FILE = "sweep.json"
STATES_FILE = "trial_states.json"


def experiment_path(storage: str, name: str) -> str:
    """Where sweep ``name``'s Tune experiment lives under ``storage`` (absolute or a URI)."""
    return f"{storage.rstrip('/')}/{name}"


def has_state(path: str) -> bool:
    """Whether an earlier run of the sweep at ``path`` left state that a resume can use."""
    from ray import tune

    return read_record(path) is not None and tune.Tuner.can_restore(path)


def write_record(path: str, record: SweepRecord) -> None:
    write_json(path, SWEEP_FILE, asdict(record))


def read_record(path: str) -> SweepRecord | None:
    data = read_json(path, SWEEP_FILE)
    return SweepRecord(**data) if data is not None else None


def write_json(path: str, file_name: str, data: Any) -> None:
    fs, fs_path = _filesystem(path)
    fs.create_dir(fs_path, recursive=True)
    with fs.open_output_stream(f"{fs_path}/{file_name}") as out:
        out.write(json.dumps(data, indent=2).encode())


def read_json(path: str, file_name: str) -> Any:
    fs, fs_path = _filesystem(path)
    target = f"{fs_path}/{file_name}"
    if fs.get_file_info(target).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(target) as handle:
        return json.loads(handle.read().decode())


def _filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path
