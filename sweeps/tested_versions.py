"""The versions of Ray and Optuna the engine was tested with, and the start-up check that refuses
others: the engine reaches into their internals (`sweeps._ray_compat`, `sweeps._optuna_compat`),
which change without notice between releases.

pyproject.toml pins the same versions, and docker/constraints.txt installs them (a test ties the
three together). To take another release: run the suite against it, then add it here and
widen the pins.
"""

from __future__ import annotations

TESTED: dict[str, tuple[str, ...]] = {
    "ray": ("2.60.0",),
    "optuna": ("5.0.0",),
}
COMPAT_MODULE = {"ray": "sweeps/_ray_compat.py", "optuna": "sweeps/_optuna_compat.py"}


class UntestedVersionError(ImportError):
    """The installed Ray or Optuna is not a version the engine was tested with."""


def version_problem(library: str, installed: str) -> str | None:
    """Why ``installed`` (a version of ``library``) is refused, or None for a tested one."""
    tested = TESTED[library]
    if installed in tested:
        return None
    listed = " or ".join(tested)
    return (
        f"gradreg's sweeps touch {library}'s internals ({COMPAT_MODULE[library]}) and were "
        f"tested with {library} {listed} only; this environment has {library} {installed}. "
        f"Install a tested version (pip install '{library}=={tested[-1]}'), or run the sweep "
        f"tests against {installed} and add it to sweeps.tested_versions.TESTED"
    )


def require_tested(library: str, installed: str) -> None:
    """Raise `UntestedVersionError` unless ``installed`` is a tested version of ``library``."""
    problem = version_problem(library, installed)
    if problem is not None:
        raise UntestedVersionError(problem)
