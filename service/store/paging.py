"""Pages of rows: the most one page holds, and opaque keyset cursors (a page's last key)."""

from __future__ import annotations

import base64
import json
from typing import Any

MAX_PAGE = 500


class InvalidCursor(ValueError):
    pass


def pack(values: list[Any]) -> str:
    """A cursor: the page's last key as URL-safe base64 of JSON, unpadded."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def unpack(cursor: str) -> Any:
    """`pack` undone; ValueError (binascii's and JSON's errors are ValueErrors) if it is not
    one."""
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
