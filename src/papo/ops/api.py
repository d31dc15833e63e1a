"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Protocol

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from papo.background import Workers
from papo.db.engine import Database, driver
from papo.db.migrate import head_revision
from papo.errors import NotFound, Unauthorized, problem
from papo.ops import metrics
from papo.ops.looplag import LoopLagMonitor
from papo.realtime.hub import EventHub
from papo.runtime import running
from papo.settings import Settings

router = APIRouter(tags=["ops"])
READY_TIMEOUT_SECONDS = 2.0


class Describes(Protocol):
    def describe(self) -> str: ...


class OpsRuntime(Protocol):
    """What health and metrics read from the running process."""

    settings: Settings
    db: Database
    hub: EventHub
    loop_lag: LoopLagMonitor
    workers: Workers

    @property
    def knowledge(self) -> Describes:
        """How knowledge retrieval works here (vectors or full text only)."""


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    """Liveness: the process answers. With the event loop's lag over the last minute (ms)."""
    state: OpsRuntime = running(request)
    return {"status": "ok", "loop_lag_ms": state.loop_lag.summary()}


@router.get("/readyz", responses={503: {"description": "Not ready; `checks` says what failed"}})
async def readyz(request: Request) -> Response:
    """Readiness: the database answers at the schema this build needs, the realtime listener is
    connected (without it, events from other processes only arrive at the next poll), and no
    background worker is waiting to be restarted after a crash."""
    state: OpsRuntime = running(request)
    checks = {"database": "ok", "migrations": "ok", "realtime_listener": "ok", "workers": "ok"}
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS), state.db.transaction() as session:
            revision = await driver(session).fetchval("SELECT version_num FROM alembic_version")
        if revision != head_revision():
            checks["migrations"] = f"database at {revision}, this build needs {head_revision()}"
    except Exception as exc:  # any failure to reach the database means: not ready
        checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    if not state.hub.listening:
        checks["realtime_listener"] = "not connected"
    if state.hub.nats is not None:
        checks["nats"] = "ok" if state.hub.nats.connected else "not connected"
    if crashed := state.workers.restarting():
        checks["workers"] = "; ".join(f"{name} restarting after {error}" for name, error in sorted(crashed.items()))
    if any(value != "ok" for value in checks.values()):
        return problem(
            503,
            "Not ready",
            "A dependency is not ready; see checks.",
            slug="not-ready",
            headers={"Retry-After": "5"},
            extensions={"checks": checks, "knowledge_retrieval": state.knowledge.describe()},
        )
    return JSONResponse({"status": "ready", "checks": checks, "knowledge_retrieval": state.knowledge.describe()})


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request) -> Response:
    state: OpsRuntime = running(request)
    expected = state.settings.metrics_token
    if not expected:
        raise NotFound("metrics are off: set PAPO_METRICS_TOKEN and scrape with that bearer token")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(presented.strip().encode(), expected.encode()):
        raise Unauthorized("send Authorization: Bearer <PAPO_METRICS_TOKEN>")
    return Response(metrics.render(await database_gauges(state)), media_type=metrics.CONTENT_TYPE)


async def database_gauges(state: OpsRuntime) -> metrics.DatabaseGauges:
    async with state.db.transaction() as session:
        rows = await driver(session).fetch(metrics.OPERATIONAL_COUNTS_SQL)

    def samples(metric: str) -> list[tuple[tuple[str, ...], float]]:
        return [((str(row["label"]),), float(row["value"])) for row in rows if row["metric"] == metric]

    return {
        "papo_whatsapp_sessions": (
            "WhatsApp sessions by status (all tenants)",
            ["status"],
            samples("whatsapp_sessions"),
        ),
        "papo_queue_depth": ("Work waiting in a database queue", ["queue"], samples("queue_depth")),
        "papo_queue_oldest_seconds": ("Age of the oldest waiting item", ["queue"], samples("queue_oldest_seconds")),
        "papo_queue_dead_letters": (
            "Items that failed their last attempt and wait for the operator",
            ["queue"],
            samples("queue_dead_letters"),
        ),
    }
