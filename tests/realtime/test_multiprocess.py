"""Two real server processes on one database: events cross processes, and a client whose server is
killed with SIGKILL resumes on the other one with every event exactly once, in order."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import httpx

from papo.auth.models import Role
from papo.client import RealtimeClient, RealtimeEvent
from tests.support import Member


async def test_cross_process_delivery_and_failover(
    two_servers: tuple[str, str, asyncio.subprocess.Process], make_tenant: Any
) -> None:
    url_a, url_b, server_a = two_servers
    alice: Member = await (await make_tenant()).member(Role.member)
    realtime = RealtimeClient([url_a, url_b], alice.token)
    stream = realtime.events()
    received: list[RealtimeEvent] = []
    messages = 40
    first_in, all_in = asyncio.Event(), asyncio.Event()

    async def consume() -> None:
        async for item in stream:
            assert isinstance(item, RealtimeEvent)
            received.append(item)
            first_in.set()
            if len(received) >= 1 + messages:
                all_in.set()

    consumer = asyncio.create_task(consume())
    await asyncio.wait_for(realtime.connected.wait(), 10)

    async with httpx.AsyncClient(base_url=url_b, headers=alice.headers, timeout=10) as via_b:
        session = (await via_b.post("/api/v1/sessions", json={"title": "failover", "assistant_id": None})).json()
        # Within a second, from process B to a client on process A.
        await asyncio.wait_for(first_in.wait(), 1.0)
        assert received[0].event == "session.created"

        sent = []
        for i in range(messages):
            content = f"m{i}"
            response = await via_b.post(f"/api/v1/sessions/{session['id']}/messages", json={"content": content})
            assert response.status_code == 201
            sent.append(content)
            if i == 15:
                server_a.send_signal(signal.SIGKILL)  # the client's server dies mid-stream
            await asyncio.sleep(0.02)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_in.wait(), 15)
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer
    await stream.aclose()

    ids = [event.id for event in received]
    assert ids == sorted(set(ids)), "events repeated or out of order"
    assert [event.data["content"] for event in received[1:]] == sent, "events lost across the failover"


async def test_live_reply_deltas_reach_a_client_on_another_process(
    two_servers: tuple[str, str, asyncio.subprocess.Process], make_tenant: Any
) -> None:
    """Deltas skip the outbox; the process generating the reply NOTIFYs them to the others."""
    url_a, url_b, _ = two_servers
    alice: Member = await (await make_tenant()).member(Role.member)
    realtime = RealtimeClient(url_a, alice.token)
    stream = realtime.events()
    first = asyncio.create_task(anext(stream))
    await asyncio.wait_for(realtime.connected.wait(), 10)
    async with httpx.AsyncClient(base_url=url_b, headers=alice.headers, timeout=10) as via_b:
        chat = (await via_b.post("/api/v1/sessions", json={"assistant_id": "default"})).json()
        posted = await via_b.post(f"/api/v1/sessions/{chat['id']}/messages", json={"content": "oi"})
        assert posted.status_code == 201
        reply_id = posted.headers["x-reply-id"]
        event = await asyncio.wait_for(first, 10)
        text = ""
        async with asyncio.timeout(30):
            while not (event.event == "message.updated" and event.data["id"] == reply_id):
                if event.event == "reply.delta":
                    assert event.id is None and event.data["offset"] == len(text)
                    text += event.data["delta"]
                event = await anext(stream)
        await stream.aclose()
        stored = (await via_b.get(f"/api/v1/sessions/{chat['id']}/messages/{reply_id}")).json()
    assert stored["reply_state"] == "complete"
    assert text == stored["content"] != ""
