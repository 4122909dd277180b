"""gradreg sweeps: a spec, a Ray Tune + Optuna driver, MLflow records. Never imports FastAPI."""

from sweeps.checks import Limits, SpecError, SpecIssue, load_spec_file, parse_spec, parse_spec_text
from sweeps.spec import SweepSpec

__all__ = [
    "Limits",
    "SpecError",
    "SpecIssue",
    "SweepSpec",
    "load_spec_file",
    "parse_spec",
    "parse_spec_text",
]
