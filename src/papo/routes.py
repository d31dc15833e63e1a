"""Routers' routes put straight on the application.

FastAPI (0.137 and later) keeps an included router as one node of the app's route list and, for
every request, walks each included router route by route (twice for the one that answers) with
its bookkeeping around each step: 0.25–0.6 ms of CPU per request here, the most for the routes
near the end (/healthz). Routes on the application itself are tried with a bare regular expression
each. papo's routers carry their own prefix, tags and dependencies and have no lifespan of their
own, so copying their routes in, in order, keeps which route answers a request unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """`app.include_router(router)` without the per-request walk (see the module's docstring)."""
    if router.on_startup or router.on_shutdown:
        raise ValueError("a router with startup or shutdown handlers needs include_router")
    app.router.routes.extend(router.routes)


def route_of(app: FastAPI, endpoint: Callable[..., Any]) -> APIRoute:
    """The application's route that `endpoint` answers."""
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.endpoint is endpoint:
            return route
    raise LookupError(f"no route answers {endpoint.__qualname__}")
