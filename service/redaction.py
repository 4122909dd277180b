"""Keep the API's tokens out of its logs, wherever a client put them (a query string, say)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

REDACTED = "[redacted]"
# uvicorn's own loggers and the root logger, whose handlers print everything the service logs.
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


class RedactTokens(logging.Filter):
    def __init__(self, tokens: Iterable[str]) -> None:
        super().__init__()
        self.tokens = tuple(token for token in tokens if token)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._scrub(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._scrub(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: self._scrub(arg) for key, arg in record.args.items()}
        return True

    def _scrub(self, value: object) -> object:
        if not isinstance(value, str):
            return value
        for token in self.tokens:
            value = value.replace(token, REDACTED)
        return value


def redact_tokens_in_logs(tokens: Iterable[str]) -> RedactTokens:
    """Add the filter to every handler that prints the service's and uvicorn's records."""
    redact = RedactTokens(tokens)
    handlers = {h for name in LOGGERS for h in logging.getLogger(name).handlers}
    if logging.lastResort is not None:
        handlers.add(logging.lastResort)
    for handler in handlers:
        handler.addFilter(redact)
    return redact
