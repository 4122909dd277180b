"""SpecIssue and SpecError: a spec's problems, each with the field path it was found at.

Its own module because both the parser and the rules raise them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class SpecIssue:
    loc: Loc
    message: str

    @property
    def path(self) -> str:
        # An empty key (an unknown field named "") still shows where it is.
        return ".".join(str(part) if part != "" else '""' for part in self.loc) or "(spec)"

    def to_dict(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "path": self.path, "message": self.message}


class SpecError(ValueError):
    """A sweep spec that cannot run; `issues` lists every problem found."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = issues
        lines = "\n".join(f"  {issue.path}: {issue.message}" for issue in issues)
        super().__init__(f"invalid sweep spec ({len(issues)} problem(s)):\n{lines}")
