"""Where a feature finds the running process's services: the app's wiring keeps one object on
`app.state.papo`, and each feature reads it through a Protocol of its own listing the attributes it
uses (`State = Annotated[MyRuntime, Depends(current_runtime)]`), so no feature imports the wiring or
another feature's part of it. `papo.app` checks, for mypy, that the wiring's object satisfies
every feature's Protocol."""

from __future__ import annotations

from typing import Any

from starlette.requests import HTTPConnection


def running(connection: HTTPConnection) -> Any:
    """The wiring's object; the caller types it with its own Protocol."""
    return connection.app.state.papo


async def current_runtime(connection: HTTPConnection) -> Any:
    """The same, as a FastAPI dependency (async, so it is not handed to a worker thread)."""
    return connection.app.state.papo
