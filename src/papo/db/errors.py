"""Map PostgreSQL refusals raised under row-level security to papo's domain errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from sqlalchemy.exc import DBAPIError

from papo.errors import NotFound, causes

NO_DATA_FOUND = "P0002"  # raised by papo's triggers when the parent row is not visible
INSUFFICIENT_PRIVILEGE = "42501"  # includes "new row violates row-level security policy"


# Connection exceptions (class 08) and the server shutting down or starting (57P01-57P03).
_UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) says the database connection is gone or refused."""
    return any(_connection_lost(seen) for seen in causes(exc))


def _connection_lost(seen: BaseException) -> bool:
    if isinstance(seen, asyncpg.PostgresConnectionError | asyncpg.InternalClientError | ConnectionError):
        return True
    if isinstance(seen, asyncpg.InterfaceError) and "connection is closed" in str(seen):
        return True
    if isinstance(seen, DBAPIError) and seen.connection_invalidated:
        return True
    state = getattr(seen, "sqlstate", None)
    return isinstance(state, str) and state.startswith(_UNREACHABLE_SQLSTATES)


def sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


@contextmanager
def not_found_on_refusal(detail: str) -> Iterator[None]:
    """A write the policies refuse is reported as 404: existence of other people's rows never leaks."""
    try:
        yield
    except DBAPIError as exc:
        if sqlstate(exc) in (NO_DATA_FOUND, INSUFFICIENT_PRIVILEGE):
            raise NotFound(detail) from exc
        raise
