"""Package front doors whose names load on first use (`gradreg`, `gradreg.data`), so that a
package's light modules (`gradreg.methods`, `gradreg.data.splits`) stay cheap to import."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's module-level ``__getattr__`` and ``__dir__``: ``exports`` maps each name to
    the module that defines it, imported when the name is first read (then kept)."""
    namespace = sys.modules[package].__dict__

    def load(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def names() -> list[str]:
        return sorted([*namespace, *exports])

    return load, names
