"""Keep the API's tokens out of its logs, wherever a client put them (a query string, say)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import quote

REDACTED = "[redacted]"
# uvicorn's own loggers and the root logger, whose handlers print everything the service logs.
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


class RedactTokens(logging.Filter):
    """Replace every token, as written or percent-encoded (a URL), in a record's message, its
    arguments, its exception and its stack text."""

    _formatter = logging.Formatter()

    def __init__(self, tokens: Iterable[str]) -> None:
        super().__init__()
        forms = {form for token in tokens if token for form in (token, quote(token, safe=""))}
        self.forms = tuple(sorted(forms, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._scrub(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._scrub(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: self._scrub(arg) for key, arg in record.args.items()}
        if record.exc_info and not record.exc_text:
            # Formatters print exc_text when it is set: format it here, then scrub it.
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub_text(record.exc_text)
        if record.stack_info:
            record.stack_info = self._scrub_text(record.stack_info)
        return True

    def _scrub_text(self, text: str) -> str:
        for form in self.forms:
            text = text.replace(form, REDACTED)
        return text

    def _scrub(self, value: object) -> object:
        text = value if isinstance(value, str) else str(value)
        if not any(form in text for form in self.forms):
            return value  # keep non-strings as they are, for %d and friends
        return self._scrub_text(text)


def redact_tokens_in_logs(tokens: Iterable[str]) -> RedactTokens:
    """Add the filter to every handler that prints the service's and uvicorn's records."""
    redact = RedactTokens(tokens)
    handlers = {h for name in LOGGERS for h in logging.getLogger(name).handlers}
    if logging.lastResort is not None:
        handlers.add(logging.lastResort)
    for handler in handlers:
        handler.addFilter(redact)
    return redact
