"""gradreg sweeps: a spec, a Ray Tune + Optuna driver, MLflow records. Never imports FastAPI.

The names below load on first use: `sweeps.records` stays cheap for the API's store and
client, parsing a spec imports no Ray, and the driver's names load Ray Tune.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DirectoryStore": "sweeps.store",
    "DriverOptions": "sweeps.driver",
    "Limits": "sweeps.spec.limits",
    "SpecError": "sweeps.spec.errors",
    "SpecIssue": "sweeps.spec.errors",
    "SweepOutcome": "sweeps.records",
    "SweepRecord": "sweeps.records",
    "SweepSpec": "sweeps.spec",
    "SweepStore": "sweeps.store",
    "TrialEvent": "sweeps.records",
    "TrialSummary": "sweeps.records",
    "dump_spec": "sweeps.spec.parse",
    "load_spec_file": "sweeps.spec.parse",
    "parse_spec": "sweeps.spec.parse",
    "parse_spec_text": "sweeps.spec.parse",
    "require_valid": "sweeps.spec.checks",
    "resume_sweep": "sweeps.driver",
    "run_stored": "sweeps.store",
    "run_sweep": "sweeps.driver",
}
__all__ = [
    "DirectoryStore",
    "DriverOptions",
    "Limits",
    "SpecError",
    "SpecIssue",
    "SweepOutcome",
    "SweepRecord",
    "SweepSpec",
    "SweepStore",
    "TrialEvent",
    "TrialSummary",
    "dump_spec",
    "load_spec_file",
    "parse_spec",
    "parse_spec_text",
    "require_valid",
    "resume_sweep",
    "run_stored",
    "run_sweep",
]

if TYPE_CHECKING:
    from sweeps.driver import DriverOptions, resume_sweep, run_sweep
    from sweeps.records import SweepOutcome, SweepRecord, TrialEvent, TrialSummary
    from sweeps.spec import SweepSpec
    from sweeps.spec.checks import require_valid
    from sweeps.spec.errors import SpecError, SpecIssue
    from sweeps.spec.limits import Limits
    from sweeps.spec.parse import dump_spec, load_spec_file, parse_spec, parse_spec_text
    from sweeps.store import DirectoryStore, SweepStore, run_stored


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sweeps' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
