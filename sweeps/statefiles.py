"""The files a sweep keeps beside Tune's experiment state, locally or in a bucket.

    EXPERIMENT/sweep.json          the `SweepRecord`: what `resume NAME` needs besides Tune
    EXPERIMENT/trial_states.json   each trial's final state (succeeded, stopped, failed)
    EXPERIMENT/trial_reports/<trial id>.json
                                   each finished trial's last report (its metrics and MLflow
                                   run id), written once as it ends: Tune keeps only a part
                                   (`sweeps.tune_results`)
    EXPERIMENT/code/<hex>.zip      the code bundle the sweep runs with (`sweeps.code`), by the
                                   sha256 in its spec's code.digest: a resume ships the same

EXPERIMENT is ``<storage>/<sweep name>``, a path or a URI such as ``s3://bucket/prefix/name``.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import pyarrow.fs

from sweeps.code import CodeBundle
from sweeps.records import SweepRecord

SWEEP_FILE = "sweep.json"
STATES_FILE = "trial_states.json"
CODE_DIR = "code"
REPORTS_DIR = "trial_reports"
REPORT_READERS = 16  # a bucket answers each small read in tens of ms: read them side by side


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


def write_bundle(path: str, bundle: CodeBundle) -> str:
    """Keep ``bundle`` beside the sweep's state (content-addressed); returns where."""
    fs, fs_path = _filesystem(path)
    directory = f"{fs_path}/{CODE_DIR}"
    fs.create_dir(directory, recursive=True)
    with fs.open_output_stream(f"{directory}/{bundle.file_name}") as out:
        out.write(bundle.data)
    return f"{path}/{CODE_DIR}/{bundle.file_name}"


def read_bundle(path: str, digest: str) -> CodeBundle | None:
    """The bundle with ``digest`` kept beside the sweep's state, checked against its digest;
    None if none is kept."""
    fs, fs_path = _filesystem(path)
    location = f"{CODE_DIR}/{digest.removeprefix('sha256:')}.zip"
    target = f"{fs_path}/{location}"
    if fs.get_file_info(target).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(target) as handle:
        bundle = CodeBundle(handle.read(), f"{path}/{location}")
    if bundle.digest != digest:
        raise ValueError(f"the code bundle at {bundle.source} is not {digest}: it was changed")
    return bundle


def write_report(path: str, trial_id: str, report: dict[str, Any]) -> None:
    """Keep finished trial ``trial_id``'s last ``report`` beside the sweep's state."""
    write_json(f"{path}/{REPORTS_DIR}", f"{trial_id}.json", report)


def read_reports(path: str, skip: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """The finished trials' reports kept beside the sweep's state (`write_report`), by trial
    id, but those of the trials in ``skip``."""
    fs, fs_path = _filesystem(path)
    selector = pyarrow.fs.FileSelector(f"{fs_path}/{REPORTS_DIR}", allow_not_found=True)
    wanted = {
        info.base_name.removesuffix(".json"): info.path
        for info in fs.get_file_info(selector)
        if info.base_name.endswith(".json") and info.base_name.removesuffix(".json") not in skip
    }

    def read(target: str) -> dict[str, Any]:
        with fs.open_input_stream(target) as handle:
            report: dict[str, Any] = json.loads(handle.read().decode())
            return report

    with ThreadPoolExecutor(REPORT_READERS) as pool:
        return dict(zip(wanted, pool.map(read, wanted.values()), strict=True))


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
