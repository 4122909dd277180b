"""Reading and writing specs: YAML or JSON text → a checked `SweepSpec`, and back.

`parse_spec` is the front door: the shape (pydantic) and then the rules (`sweeps.spec.checks`),
run once; a spec that passes is not checked again downstream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sweeps.spec import SweepSpec
from sweeps.spec.checks import admitted
from sweeps.spec.errors import SpecError, SpecIssue
from sweeps.spec.limits import Limits


def parse_spec(document: Mapping[str, Any], limits: Limits | None = None) -> SweepSpec:
    """Validate a spec given as a mapping (parsed YAML or JSON); the spec comes back as it is
    admitted (see `sweeps.spec.checks.admitted`: a missing time budget becomes the cap)."""
    return admitted(validate_shape(document), limits or Limits.from_settings())


def validate_shape(document: Mapping[str, Any]) -> SweepSpec:
    """The spec's shape and types only: for documents the rules already admitted."""
    if not isinstance(document, Mapping):
        raise SpecError([SpecIssue((), f"a spec is a mapping, got {type(document).__name__}")])
    try:
        return SweepSpec.model_validate(dict(document))
    except ValidationError as error:
        raise SpecError([_pydantic_issue(e) for e in error.errors()]) from None


class _SpecLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no type information
    """YAML with YAML 1.2's numbers: PyYAML alone reads 1e-4 (no dot) as a string."""


class _SpecDumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML has no type information
    """Quotes every string `_SpecLoader` would read as a number (``"1e5"`` stays a string)."""


for _yaml_class in (_SpecLoader, _SpecDumper):
    _yaml_class.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )


def parse_spec_text(text: str, limits: Limits | None = None) -> SweepSpec:
    """Validate a spec written in JSON or YAML."""
    return parse_spec(read_document(text), limits)


def read_document(text: str) -> Any:
    """The document a JSON or YAML text holds (YAML 1.2 numbers), before any checking."""
    try:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            try:
                return yaml.load(text, Loader=_SpecLoader)  # a SafeLoader subclass
            except yaml.YAMLError as error:
                raise SpecError([SpecIssue((), f"not valid YAML or JSON: {error}")]) from None
    except RecursionError:
        raise SpecError([SpecIssue((), "nested too deeply to be a spec")]) from None


def load_spec_file(path: str | Path, limits: Limits | None = None) -> SweepSpec:
    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ValueError(f"spec file {path} must end in .yaml, .yml or .json")
    return parse_spec_text(path.read_text(), limits)


def dump_spec(spec: SweepSpec, fmt: str = "yaml") -> str:
    return dump_document(spec.to_document(), fmt)


def dump_document(document: Mapping[str, Any], fmt: str = "yaml") -> str:
    """A spec document (a stored one, say) as JSON or YAML text that `read_document` reads
    back the same."""
    document = dict(document)
    if fmt == "json":
        return json.dumps(document, indent=2) + "\n"
    if fmt == "yaml":
        # Not allow_unicode: PyYAML then writes U+0085 raw, and YAML reads it as a line break.
        text: str = yaml.dump(document, Dumper=_SpecDumper, sort_keys=False)
        return text
    raise ValueError(f"unknown format {fmt!r}; accepted: yaml, json")


def _pydantic_issue(error: Mapping[str, Any]) -> SpecIssue:
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field (check its spelling and the spec's JSON Schema)"
    elif error["type"] == "literal_error":
        message = f"{message} (got {error['input']!r})"
    return SpecIssue(tuple(error["loc"]), message)
