"""Outbox, commit order, WebSocket and SSE streams with replay, against a real socket and database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import pytest
import websockets

from papo.auth.models import Role
from papo.auth.service import Principal
from papo.auth.tokens import SigningKey, issue_token
from papo.client import RealtimeClient, RealtimeClosed, RealtimeEvent, Resync
from papo.db.engine import Database
from papo.realtime.api import StreamEnded, event_stream
from papo.realtime.hub import Subscriber
from papo.realtime.service import Event, bounds, prune_events
from papo.settings import Settings
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import Member, create_session, send


@pytest.fixture
async def pair(make_tenant: Any) -> tuple[Member, Member]:
    t1, t2 = await make_tenant("RT1"), await make_tenant("RT2")
    return await t1.member(Role.member), await t2.member(Role.member)


def ws_url(live_url: str) -> str:
    return live_url.replace("http://", "ws://") + "/api/v1/realtime"


async def next_items(iterator: Any, count: int) -> list[Any]:
    items = []
    async with asyncio.timeout(5):
        while len(items) < count:
            items.append(await anext(iterator))
    return items


async def subscribed(live_url: str, token: str) -> tuple[Any, asyncio.Task[Any]]:
    """A stream that is connected and live, and the task awaiting its first item."""
    realtime = RealtimeClient(live_url, token)
    stream = realtime.events()
    first = asyncio.create_task(anext(stream))
    await asyncio.wait_for(realtime.connected.wait(), 5)
    return stream, first


async def closing_code(socket: Any) -> int:
    """Read until the server closes the socket; the close code it sent."""
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await socket.recv()
    assert socket.close_code is not None
    return int(socket.close_code)


async def stop(stream: Any, pending: asyncio.Task[Any]) -> None:
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        await pending
    await stream.aclose()


class TestOutbox:
    async def test_rolled_back_work_leaves_no_event(
        self, client: httpx.AsyncClient, pair: tuple[Member, Member], live_url: str
    ) -> None:
        alice, _ = pair
        sid = (await create_session(client, alice))["id"]
        stream, first = await subscribed(live_url, alice.token)
        # A message into a session that then fails validation: the request rolls back.
        bad = await client.post(
            f"/api/v1/sessions/{sid}/messages",
            json={"content": "x", "metadata": {"k": "v" * 20000}},
            headers=alice.headers,
        )
        assert bad.status_code == 422
        await send(client, alice, sid, "kept")
        event = await asyncio.wait_for(first, 5)
        assert isinstance(event, RealtimeEvent)
        assert event.event == "message.created"
        assert event.data["content"] == "kept"
        await stream.aclose()

    async def test_ids_follow_commit_order(
        self, database: ProvisionedDatabase, make_tenant: Any, db: Database, settings: Settings
    ) -> None:
        """Writers publish and then hold their transactions open for random times; positions are
        stamped after commit, by some writers themselves and by a concurrent stamper (a relay); a
        reader polling `id > last` must still never step over an id that becomes visible later."""
        tenant = await make_tenant()
        member = await tenant.member()
        dsn = plain_dsn(database.app_url)
        writers = [await asyncpg.connect(dsn) for _ in range(4)]
        reader = await asyncpg.connect(dsn)
        stamper = await asyncpg.connect(dsn)
        rng = random.Random(7)
        seen: list[int] = []
        done, all_stamped = asyncio.Event(), asyncio.Event()

        async def write(connection: asyncpg.Connection, rounds: int) -> None:
            for _ in range(rounds):
                async with connection.transaction():
                    await connection.execute("SELECT papo_set_context($1, $2, 'member')", tenant.id, member.user_id)
                    await asyncio.sleep(rng.random() * 0.005)
                    payload = [
                        {
                            "tenant_id": str(tenant.id),
                            "audience": "user",
                            "user_id": member.user_id,
                            "type": "test.tick",
                            "payload": {},
                        }
                    ]
                    await connection.fetchval("SELECT papo_publish_events($1::jsonb)", json.dumps(payload))
                    await asyncio.sleep(rng.random() * 0.01)  # commit late
                if rng.random() < 0.5:  # as papo's publishers do after their commit
                    await connection.fetchval("SELECT papo_stamp_events(10000)")

        async def stamp() -> None:  # as every relay round does
            while not done.is_set():
                await stamper.fetchval("SELECT papo_stamp_events(10000)")
                await asyncio.sleep(rng.random() * 0.003)
            await stamper.fetchval("SELECT papo_stamp_events(10000)")
            all_stamped.set()

        async def read() -> None:
            last = await reader.fetchval("SELECT head FROM papo_events_bounds()")
            start = last
            while True:
                # read once more after the last stamping, not only after the event was set: a poll
                # that came back empty just before the final stamping must not end the reading
                stamped_before_this_read = all_stamped.is_set()
                rows = await reader.fetch("SELECT event_id FROM papo_events_after($1, 1000)", last)
                for row in rows:
                    seen.append(row["event_id"])
                    last = row["event_id"]
                if stamped_before_this_read and not rows:
                    break
                await asyncio.sleep(0.001)
            final = await reader.fetch("SELECT event_id FROM papo_events_after($1, 100000)", start)
            assert seen == [row["event_id"] for row in final]

        stamping = asyncio.create_task(stamp())
        await asyncio.sleep(0)
        reading = asyncio.create_task(read())
        await asyncio.gather(*(write(c, 15) for c in writers))
        done.set()
        await stamping
        await reading
        assert len(seen) == 60
        assert seen == sorted(seen)
        for connection in [*writers, reader, stamper]:
            await connection.close()


class TestWebSocket:
    async def test_live_then_resume_after_disconnect(
        self, client: httpx.AsyncClient, pair: tuple[Member, Member], live_url: str
    ) -> None:
        alice, _ = pair
        stream, first = await subscribed(live_url, alice.token)
        started = time.perf_counter()
        sid = (await create_session(client, alice, "live"))["id"]
        created = await asyncio.wait_for(first, 5)
        assert isinstance(created, RealtimeEvent)
        assert created.event == "session.created"
        assert created.data["title"] == "live"
        assert time.perf_counter() - started < 1.0
        await stream.aclose()

        # While nobody listens, two messages arrive; a new client resuming from the cursor gets both.
        await send(client, alice, sid, "one")
        await send(client, alice, sid, "two")
        resumed = RealtimeClient(live_url, alice.token, since=created.id).events()
        items = await next_items(resumed, 2)
        assert [(i.event, i.data["content"]) for i in items] == [("message.created", "one"), ("message.created", "two")]
        assert items[0].id < items[1].id
        await resumed.aclose()

    async def test_other_tenants_and_users_see_nothing(
        self, client: httpx.AsyncClient, pair: tuple[Member, Member], make_tenant: Any, live_url: str
    ) -> None:
        alice, carol = pair
        neighbour = await (await make_tenant()).member()
        streams, pending = {}, {}
        for name, who in (("alice", alice), ("carol", carol), ("neighbour", neighbour)):
            streams[name], pending[name] = await subscribed(live_url, who.token)
        sid = (await create_session(client, alice, "private"))["id"]
        await send(client, alice, sid, "secret")
        got = await asyncio.wait_for(pending["alice"], 5)
        assert isinstance(got, RealtimeEvent)
        assert got.data["title"] == "private"
        await asyncio.sleep(0.5)
        assert not pending["carol"].done()
        assert not pending["neighbour"].done()
        for name, task in pending.items():
            await stop(streams[name], task)

    async def test_bad_frames_and_tokens(self, pair: tuple[Member, Member], live_url: str, settings: Settings) -> None:
        alice, carol = pair
        url = ws_url(live_url)

        async def first_frame_closes(frame: str | bytes) -> int:
            async with websockets.connect(url) as socket:
                await socket.send(frame)
                return await closing_code(socket)

        assert await first_frame_closes("not json") == 4400
        assert await first_frame_closes("[1, 2]") == 4400
        assert await first_frame_closes(json.dumps({"type": "subscribe", "user": carol.user_id})) == 4001
        assert await first_frame_closes(json.dumps({"type": "auth", "token": "forged.token.value"})) == 4001
        assert await first_frame_closes(json.dumps({"type": "auth", "token": alice.token, "since": "abc"})) == 4400
        assert await first_frame_closes(json.dumps({"type": "auth", "token": alice.token, "since": 10**12})) == 4400
        assert await first_frame_closes("x" * (settings.realtime_max_frame_bytes + 1)) == 1009

        async with websockets.connect(url) as socket:
            await socket.send(json.dumps({"type": "auth", "token": alice.token, "since": None}))
            assert json.loads(await socket.recv())["type"] == "ready"
            await socket.send("garbage")
            assert json.loads(await socket.recv())["type"] == "error"
            await socket.send(json.dumps({"type": "dance"}))
            assert "unknown message type" in json.loads(await socket.recv())["detail"]
            await socket.send(json.dumps({"type": "ping"}))
            assert json.loads(await socket.recv()) == {"type": "pong"}
            await socket.send(json.dumps({"type": "auth", "token": alice.token}))
            assert json.loads(await socket.recv()) == {"type": "auth_ok"}
            # Swapping identity on an open socket is refused and closes it.
            await socket.send(json.dumps({"type": "auth", "token": carol.token}))
            assert await closing_code(socket) == 4003

        with pytest.raises(RealtimeClosed) as refused:
            await anext(RealtimeClient(live_url, "bad-token").events())
        assert refused.value.code == 4001

    async def test_resync_when_cursor_is_older_than_retention(
        self, client: httpx.AsyncClient, pair: tuple[Member, Member], live_url: str, db: Database
    ) -> None:
        alice, _ = pair
        await create_session(client, alice, "old")
        async with db.transaction() as session:
            assert await prune_events(session, 0) >= 1
        stream = RealtimeClient(live_url, alice.token, since=0).events()
        [item] = await next_items(stream, 1)
        assert isinstance(item, Resync)
        await stream.aclose()


class TestServerSentEvents:
    async def test_replay_with_last_event_id(
        self, client: httpx.AsyncClient, pair: tuple[Member, Member], live_url: str, db: Database
    ) -> None:
        alice, _ = pair
        sid = (await create_session(client, alice, "sse"))["id"]
        async with db.transaction() as session:
            _, head = await bounds(session)
        ids = []
        async with httpx.AsyncClient(base_url=live_url, headers=alice.headers, timeout=10) as http:
            for content in ("a", "b", "c"):
                await send(client, alice, sid, content)

            async def read(headers: dict[str, str], count: int) -> list[dict[str, Any]]:
                found: list[dict[str, Any]] = []
                async with http.stream("GET", f"/api/v1/events?since={head}", headers=headers) as response:
                    assert response.status_code == 200
                    assert response.headers["content-type"].startswith("text/event-stream")
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            message = json.loads(line[6:])
                            if message["type"] == "event" and message["data"].get("session_id") == sid:
                                found.append(message)
                                if len(found) == count:
                                    return found
                return found

            everything = await asyncio.wait_for(read({}, 3), 10)
            assert [m["data"]["content"] for m in everything] == ["a", "b", "c"]
            ids = [m["id"] for m in everything]
            after_first = await asyncio.wait_for(read({"Last-Event-ID": str(ids[0])}, 2), 10)
            assert [m["id"] for m in after_first] == ids[1:]
            bad = await http.get("/api/v1/events", headers={"Last-Event-ID": "yesterday"})
            assert bad.status_code == 400
            assert (await http.get("/api/v1/events", headers={"Authorization": "Bearer nope"})).status_code == 401


class TestResilience:
    async def test_slow_consumer_is_cut_off_after_what_it_had(self, app: Any, pair: tuple[Member, Member]) -> None:
        alice, _ = pair
        state = app.state.papo
        principal = Principal(alice.tenant_id, alice.user_id, "member")
        subscriber = Subscriber(principal, capacity=2, transport="websocket")
        stream = event_stream(state, subscriber, None)
        ready = await anext(stream)
        assert ready["type"] == "ready"
        base = ready["id"] + 10**9
        for offset in range(3):
            subscriber.offer(Event(base + offset, alice.tenant_id, "user", alice.user_id, "test.tick", {}))
        assert subscriber.overflowed.is_set()
        delivered = [await anext(stream), await anext(stream)]
        assert [m.id for m in delivered if isinstance(m, Event)] == [base, base + 1]
        with pytest.raises(StreamEnded) as ended:
            await anext(stream)
        assert ended.value.code == 4008

    async def test_a_quiet_stream_gets_heartbeats_and_a_busy_one_its_events(
        self, app: Any, pair: tuple[Member, Member], settings: Settings
    ) -> None:
        alice, _ = pair
        papo = app.state.papo
        quick = settings.model_copy(update={"realtime_heartbeat_seconds": 0.3})
        state = SimpleNamespace(settings=quick, db=papo.db, hub=papo.hub, verifier=papo.verifier)
        subscriber = Subscriber(Principal(alice.tenant_id, alice.user_id, "member"), capacity=50, transport="sse")
        stream = event_stream(state, subscriber, None)
        ready = await anext(stream)
        base = ready["id"] + 10**9
        started = time.monotonic()
        assert await asyncio.wait_for(anext(stream), 5) == {"type": "heartbeat"}
        assert time.monotonic() - started >= 0.25  # not before it is due
        for offset in range(20):  # a burst: each event in order, no heartbeat between them
            subscriber.offer(Event(base + offset, alice.tenant_id, "user", alice.user_id, "test.tick", {}))
        burst = [await asyncio.wait_for(anext(stream), 5) for _ in range(20)]
        assert [m.id for m in burst if isinstance(m, Event)] == [base + offset for offset in range(20)]
        quiet = time.monotonic()
        assert await asyncio.wait_for(anext(stream), 5) == {"type": "heartbeat"}  # quiet again: the alarm rang
        assert time.monotonic() - quiet >= 0.25
        await stream.aclose()

    async def test_expired_token_closes_the_socket(self, live_url: str, make_tenant: Any, settings: Settings) -> None:
        tenant = await make_tenant()
        member = await tenant.member()
        short, _ = issue_token(
            settings,
            SigningKey.load(settings),
            tenant_id=tenant.id,
            user_id=member.user_id,
            role="member",
            ttl_seconds=1,
        )
        async with websockets.connect(ws_url(live_url)) as socket:
            await socket.send(json.dumps({"type": "auth", "token": short, "since": None}))
            assert json.loads(await socket.recv())["type"] == "ready"
            started = time.monotonic()
            code = await asyncio.wait_for(closing_code(socket), settings.auth_leeway_seconds + 5)
        assert code == 4001
        assert time.monotonic() - started >= 1

    async def test_relay_survives_losing_its_listening_connection(
        self, client: httpx.AsyncClient, pair: tuple[Member, Member], live_url: str, database: ProvisionedDatabase
    ) -> None:
        alice, _ = pair
        stream, first = await subscribed(live_url, alice.token)
        owner = await asyncpg.connect(plain_dsn(database.owner_url))
        try:
            killed = await owner.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'papo-realtime-listener:%'"
            )
        finally:
            await owner.close()
        assert killed, "no listening connection found"
        await create_session(client, alice, "after the cut")
        event = await asyncio.wait_for(first, 10)
        assert isinstance(event, RealtimeEvent)
        assert event.data["title"] == "after the cut"
        await stream.aclose()
