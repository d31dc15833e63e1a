"""Map PostgreSQL refusals raised under row-level security to papo's domain errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError

from papo.errors import NotFound

NO_DATA_FOUND = "P0002"  # raised by papo's triggers when the parent row is not visible
INSUFFICIENT_PRIVILEGE = "42501"  # includes "new row violates row-level security policy"


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
