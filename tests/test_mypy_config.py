"""mypy's configuration in pyproject.toml: strict on the modules its overrides name, ordinary
elsewhere (`make lint` runs it)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from mypy.config_parser import parse_config_file
from mypy.main import define_options
from mypy.options import Options

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"
# What `--strict` turns on, but for the flags that hold for a whole run only.
WHOLE_RUN_ONLY = {"warn_unused_configs"}


def strict_flags() -> list[tuple[str, bool]]:
    _, _, assignments = define_options()
    return [(dest, value) for dest, value in assignments if dest not in WHOLE_RUN_ONLY]


def options_for(module: str) -> Options:
    """The options mypy checks ``module`` with, read from pyproject.toml as mypy reads it."""
    options = Options()
    _, _, assignments = define_options()

    def set_strict_flags() -> None:  # what mypy's own command line does for `strict`
        for dest, value in assignments:
            setattr(options, dest, value)

    parse_config_file(options, set_strict_flags, str(PYPROJECT), io.StringIO(), io.StringIO())
    return options.clone_for_module(module)


@pytest.mark.parametrize(
    "module",
    [
        "gradreg",
        "gradreg.train",
        "gradreg.data.splits",
        "service.schemas",
        "service.client",
        "service.settings",
        # the engine's front door: the package, the modules it exports from, and the spec
        "sweeps",
        "sweeps.driver",
        "sweeps.store",
        "sweeps.records",
        "sweeps.spec",
        "sweeps.spec.checks",
    ],
)
def test_the_strict_modules_get_every_flag_of_strict(module):
    options = options_for(module)
    assert [(dest, getattr(options, dest)) for dest, _ in strict_flags()] == strict_flags()


@pytest.mark.parametrize(
    "module", ["sweeps.cli", "sweeps.tracking", "sweeps.checkpoints", "service.app"]
)
def test_the_other_modules_are_checked_the_ordinary_way(module):
    """`strict = true` in an override made every module strict: mypy applies it to the run."""
    options = options_for(module)
    assert options.check_untyped_defs  # the project's own choice for every module
    assert not options.disallow_untyped_defs
    assert not options.disallow_any_generics
    assert not options.warn_return_any
