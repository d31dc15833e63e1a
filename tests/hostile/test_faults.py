"""Faults: a server killed with SIGKILL in the middle of a burst of writes, and the database
dropping every connection of the app under traffic."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from typing import Any

import asyncpg
import httpx

from papo.client import RealtimeClient, RealtimeEvent
from papo.settings import Settings
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import Member, free_port, start_server

HALF_WRITTEN_SESSIONS = """
SELECT s.id FROM chat_sessions s
  LEFT JOIN LATERAL (SELECT max(created_at) AS newest FROM messages m
                      WHERE m.tenant_id = s.tenant_id AND m.session_id = s.id) m ON true
 WHERE s.tenant_id = $1 AND s.last_message_at IS DISTINCT FROM m.newest
"""
MESSAGES_WITHOUT_EVENT = """
SELECT m.id FROM messages m
 WHERE m.tenant_id = $1
   AND NOT EXISTS (SELECT 1 FROM events e WHERE e.tenant_id = m.tenant_id AND e.type = 'message.created'
                                            AND e.payload->>'id' = m.id::text)
"""
SESSIONS_WITHOUT_EVENT = """
SELECT s.id FROM chat_sessions s
 WHERE s.tenant_id = $1
   AND NOT EXISTS (SELECT 1 FROM events e WHERE e.tenant_id = s.tenant_id AND e.type = 'session.created'
                                            AND e.payload->>'id' = s.id::text)
"""
EVENTS_WITHOUT_ROW = """
SELECT e.id FROM events e
 WHERE e.tenant_id = $1 AND e.type IN ('message.created', 'session.created')
   AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.tenant_id = e.tenant_id AND m.id::text = e.payload->>'id')
   AND NOT EXISTS (SELECT 1 FROM chat_sessions s WHERE s.tenant_id = e.tenant_id AND s.id::text = e.payload->>'id')
"""


async def test_kill_9_mid_burst_loses_nothing_acknowledged(
    settings: Settings, database: ProvisionedDatabase, make_tenant: Any
) -> None:
    tenant = await make_tenant("Burst")
    members: list[Member] = [await tenant.member() for _ in range(4)]
    port = free_port()
    server = await start_server(settings, port, PAPO_RATE_LIMITS_ENABLED="false")
    url = f"http://127.0.0.1:{port}"
    acknowledged: dict[str, str] = {}  # message id -> content
    sessions: set[str] = set()
    enough = asyncio.Event()

    async def writer(who: Member, worker: int) -> None:
        async with httpx.AsyncClient(base_url=url, headers=who.headers, timeout=5) as http:
            for round_ in range(1000):
                try:
                    created = await http.post(
                        "/api/v1/sessions", json={"title": f"w{worker}-{round_}", "assistant_id": None}
                    )
                    if created.status_code != 201:
                        continue
                    sessions.add(created.json()["id"])
                    for n in range(3):
                        content = f"burst {worker}-{round_}-{n} {uuid.uuid4().hex}"
                        sent = await http.post(
                            f"/api/v1/sessions/{created.json()['id']}/messages", json={"content": content}
                        )
                        if sent.status_code == 201:
                            acknowledged[sent.json()["id"]] = content
                            if len(acknowledged) >= 150:
                                enough.set()
                except httpx.HTTPError:
                    return  # the server is gone

    writers = [asyncio.create_task(writer(members[i % 4], i)) for i in range(12)]
    try:
        await asyncio.wait_for(enough.wait(), 60)
        os.kill(server.pid, signal.SIGKILL)
        await server.wait()
        await asyncio.wait_for(asyncio.gather(*writers, return_exceptions=True), 30)
    finally:
        for task in writers:
            task.cancel()
        if server.returncode is None:
            server.kill()

    restarted = await start_server(settings, port)
    try:
        owner = await asyncpg.connect(plain_dsn(database.owner_url))
        try:
            stored = {
                str(row["id"]): row["content"]
                for row in await owner.fetch("SELECT id, content FROM messages WHERE tenant_id = $1", tenant.id)
            }
            # every acknowledged message is there, with what was sent
            missing = {mid: text for mid, text in acknowledged.items() if stored.get(mid) != text}
            assert missing == {}
            # no session half-written: its activity mark matches its messages
            inconsistent = await owner.fetch(HALF_WRITTEN_SESSIONS, tenant.id)
            assert inconsistent == []
            # every row has its event and every event its row
            rows_without_event = await owner.fetch(MESSAGES_WITHOUT_EVENT, tenant.id)
            events_without_row = await owner.fetch(EVENTS_WITHOUT_ROW, tenant.id)
            sessions_without_event = await owner.fetch(SESSIONS_WITHOUT_EVENT, tenant.id)
        finally:
            await owner.close()
        assert rows_without_event == [] and events_without_row == [] and sessions_without_event == []
        assert len(acknowledged) >= 150
        # and the restarted server serves them
        async with httpx.AsyncClient(base_url=url, headers=members[0].headers) as http:
            assert (await http.get("/readyz")).status_code == 200
            listed = await http.get("/api/v1/sessions")
            assert listed.status_code == 200
    finally:
        restarted.terminate()
        await asyncio.wait_for(restarted.wait(), 10)


async def test_dropped_connections_fail_cleanly_and_recover(
    settings: Settings, database: ProvisionedDatabase, make_tenant: Any
) -> None:
    member = await (await make_tenant("Outage")).member()
    port = free_port()
    server = await start_server(settings, port, PAPO_RATE_LIMITS_ENABLED="false", PAPO_REALTIME_POLL_SECONDS="1")
    url = f"http://127.0.0.1:{port}"
    realtime = RealtimeClient(url, member.token)
    stream = realtime.events()
    first = asyncio.create_task(anext(stream))
    statuses: list[int] = []
    stop = asyncio.Event()
    try:
        await asyncio.wait_for(realtime.connected.wait(), 10)
        async with httpx.AsyncClient(base_url=url, headers=member.headers, timeout=10) as http:
            chat = (await http.post("/api/v1/sessions", json={"title": "during outage", "assistant_id": None})).json()

            async def traffic() -> None:
                while not stop.is_set():
                    response = await http.post(f"/api/v1/sessions/{chat['id']}/messages", json={"content": "tick"})
                    statuses.append(response.status_code)
                    if response.status_code != 201:
                        assert response.headers["content-type"].startswith("application/problem+json")
                        assert response.json()["status"] == response.status_code
                    await asyncio.sleep(0.01)

            load = asyncio.create_task(traffic())
            await asyncio.sleep(0.5)
            owner = await asyncpg.connect(plain_dsn(database.owner_url))
            try:
                for _ in range(5):  # every connection of that server, its realtime listener's too
                    await owner.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name LIKE '%:' || $1",
                        str(server.pid),
                    )
                    await asyncio.sleep(0.2)
            finally:
                await owner.close()
            await asyncio.sleep(1.0)
            stop.set()
            await load

            # recovered by itself: writes, readiness, and realtime delivery of what is written now
            after = await http.post(f"/api/v1/sessions/{chat['id']}/messages", json={"content": "after the outage"})
            assert after.status_code == 201
            for _ in range(100):
                if (await http.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert (await http.get("/readyz")).status_code == 200
        assert set(statuses) <= {201, 503}, statuses
        assert 503 in statuses  # the outage really hit requests in flight
        assert statuses.count(201) > 10
        event = await asyncio.wait_for(first, 10)
        async with asyncio.timeout(15):
            while not (
                isinstance(event, RealtimeEvent)
                and event.event == "message.created"
                and event.data.get("content") == "after the outage"
            ):
                event = await anext(stream)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await stream.aclose()
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)
