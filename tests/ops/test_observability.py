"""Metrics, structured logs, request ids and health, as an operator sees them."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

import asyncpg
import httpx
import structlog
from fastapi import FastAPI

from papo.app import create_app
from papo.ops.logging import configure_logging
from papo.realtime.hub import LISTENER_NAME
from papo.settings import Settings
from tests.conftest import ProvisionedDatabase, papo_logs, plain_dsn
from tests.support import METRICS_TOKEN, create_session, send

SCRAPE = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text format (labels given must all match)."""
    for line in exposition.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{key}="{wanted}"' in series for key, wanted in labels.items()):
            return float(value)
    raise AssertionError(f"no series {name} {labels} in the scrape")


async def test_metrics_need_the_token_and_never_name_users(client: httpx.AsyncClient, make_tenant: Any) -> None:
    assert (await client.get("/metrics")).status_code == 401
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["content-type"].startswith("application/problem+json")

    tenant = await make_tenant()
    member = await tenant.member()
    before = (await client.get("/metrics", headers=SCRAPE)).text
    route = "/api/v1/sessions/{session_id}/messages"
    sent_before = (
        sample(before, "papo_http_requests_total", method="POST", route=route, status="201")
        if f'route="{route}",status="201"' in before
        else 0.0
    )
    session = await create_session(client, member, "quarterly numbers")
    await send(client, member, session["id"], "the secret launch date is friday")
    await client.get(f"/no/such/page/{member.user_id}")
    missing = uuid.uuid4()  # one router serves both prefixes; each keeps its own template
    await client.get(f"/api/v1/whatsapp/sessions/{missing}", headers=member.headers)
    await client.get(f"/session/{missing}", headers=member.headers)

    scrape = await client.get("/metrics", headers=SCRAPE)
    assert scrape.status_code == 200
    text = scrape.text
    assert sample(text, "papo_http_requests_total", method="POST", route=route, status="201") == sent_before + 1
    assert sample(text, "papo_http_request_duration_seconds_count", method="POST", route=route) >= 1
    assert sample(text, "papo_http_requests_total", route="(unmatched)", status="404") >= 1
    assert sample(text, "papo_http_requests_total", route="/api/v1/whatsapp/sessions/{session_id}") >= 1
    assert sample(text, "papo_http_requests_total", route="/session/{session_id}") >= 1
    assert 'route="/{session_id}"' not in text
    assert sample(text, "papo_db_query_duration_seconds_count") > 0
    assert sample(text, "papo_db_pool_connections_open") >= 1
    assert sample(text, "papo_queue_depth", queue="whatsapp_webhooks") >= 0
    for private in (member.user_id, str(tenant.id), session["id"], "secret launch", member.email):
        assert private not in text


async def test_unset_metrics_token_means_no_metrics(settings: Settings) -> None:
    application = create_app(settings.model_copy(update={"metrics_token": None}))
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://papo.test") as http,
    ):
        response = await http.get("/metrics", headers=SCRAPE)
    assert response.status_code == 404
    assert "PAPO_METRICS_TOKEN" in response.json()["detail"]


async def test_access_log_names_route_tenant_user_and_request_id(
    client: httpx.AsyncClient, make_tenant: Any, settings: Settings
) -> None:
    member = await (await make_tenant()).member()
    session = await create_session(client, member)
    stream = io.StringIO()
    configure_logging("INFO", json=True, stream=stream)
    try:
        await client.post(
            f"/api/v1/sessions/{session['id']}/messages",
            json={"content": "my password is hunter2"},
            headers={**member.headers, "X-Request-ID": "trace-abc.123"},
        )
        missing = await client.get("/api/v1/sessions/not-a-uuid", headers=member.headers)
        structlog.get_logger("papo.test").info("login", password="hunter2", token="abc", user_id="kept")
    finally:
        papo_logs()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = next(line for line in lines if line.get("request_id") == "trace-abc.123")
    assert access["route"] == "/api/v1/sessions/{session_id}/messages"
    assert access["status"] == 201
    assert access["tenant_id"] == str(member.tenant_id)
    assert access["user_id"] == member.user_id
    assert access["ms"] >= 0
    # The request id is in the header and in the problem body, and matches the log line.
    request_id = missing.headers["x-request-id"]
    assert missing.json()["request_id"] == request_id
    assert any(line.get("request_id") == request_id and line.get("status") == 422 for line in lines)
    redacted = next(line for line in lines if line["event"] == "login")
    assert redacted["password"] == "[redacted]" and redacted["token"] == "[redacted]" and redacted["user_id"] == "kept"
    assert "hunter2" not in stream.getvalue()


async def test_readiness_follows_the_realtime_listener(
    app: FastAPI, client: httpx.AsyncClient, database: ProvisionedDatabase
) -> None:
    assert (await client.get("/healthz")).json()["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "migrations": "ok", "realtime_listener": "ok", "workers": "ok"}

    admin = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name LIKE $1 || ':%' AND datname = current_database()",
            LISTENER_NAME,
        )
    finally:
        await admin.close()
    assert killed >= 1
    statuses: list[int] = []
    for _ in range(100):  # the hub notices the loss and reconnects by itself
        statuses.append((await client.get("/readyz")).status_code)
        if statuses[-1] == 200 and app.state.papo.hub.listening:
            break
        await asyncio.sleep(0.05)
    assert statuses[-1] == 200
