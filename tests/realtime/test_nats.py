"""Fan-out through NATS JetStream (issue 16): per-tenant feeds, one bridge, PostgreSQL for gaps.

Hubs run in this process against the suite's database and a real nats-server: several hubs stand
for several processes (each has its own NATS connection, bridge contender and feeds)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest

from papo.auth.models import Role
from papo.auth.service import Principal
from papo.client import RealtimeClient, RealtimeEvent
from papo.db.engine import Database, RlsContext
from papo.realtime.hub import EventHub, Subscriber
from papo.realtime.service import Event, emit
from papo.settings import Settings
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import Member, NatsServer, free_port, start_server


def make_hub(db: Database, database: ProvisionedDatabase, url: str, prefix: str) -> EventHub:
    return EventHub(
        db,
        plain_dsn(database.app_url),
        poll_seconds=0.5,
        queue_size=10_000,
        nats_url=url,
        nats_prefix=prefix,
    )


@contextlib.asynccontextmanager
async def running(*hubs: EventHub) -> AsyncIterator[None]:
    for hub in hubs:
        await hub.start()
    try:
        yield
    finally:
        for hub in hubs:
            await hub.stop()


async def follower(hub: EventHub, member: Member) -> Subscriber:
    """A staff stream of `member`'s tenant on `hub`, its feed running."""
    subscriber = hub.subscribe(Principal(member.tenant_id, member.user_id, member.role), "websocket")
    await hub.join_feed(subscriber)
    return subscriber


async def publish(db: Database, tenant_id: uuid.UUID, n: int) -> None:
    async with db.transaction(RlsContext(tenant_id, None, Role.owner.value)) as session:
        emit(session, "test.tick", {"n": n}, tenant_id=tenant_id, user_id=None)


async def collect(subscriber: Subscriber, count: int, seconds: float = 15) -> list[Event]:
    received: list[Event] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while len(received) < count:
                received.append(await subscriber.queue.get())
    return received


def assert_once_in_order(received: list[Event], count: int) -> None:
    ticks = [event.data["n"] for event in received]
    ids = [event.id for event in received]
    assert ids == sorted(set(i for i in ids if i is not None)), "repeated or out of order"
    assert ticks == list(range(count)), f"lost or extra: got {len(ticks)} of {count}"


@pytest.fixture
async def prefix(nats_url: str) -> AsyncIterator[str]:
    """Subjects and a stream of this test's own; the stream is removed afterwards (CI may run
    these tests against the machine's NATS server)."""
    name = f"t{secrets.token_hex(4)}"
    yield name
    with contextlib.suppress(Exception):
        admin = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=0)
        with contextlib.suppress(Exception):
            await admin.jetstream().delete_stream(f"{name.upper()}_EVENTS")
        await admin.close()


async def test_a_process_follows_only_the_tenants_its_clients_see(
    db: Database, database: ProvisionedDatabase, nats_url: str, prefix: str, make_tenant: Any
) -> None:
    ours = await (await make_tenant()).member(Role.owner)
    theirs = await (await make_tenant()).member(Role.owner)
    here, there = make_hub(db, database, nats_url, prefix), make_hub(db, database, nats_url, prefix)
    async with running(here, there):
        mine = await follower(here, ours)
        other = await follower(there, theirs)
        for n in range(30):
            await publish(db, ours.tenant_id, n)
            await publish(db, theirs.tenant_id, n)
        assert_once_in_order(await collect(mine, 30), 30)
        assert_once_in_order(await collect(other, 30), 30)
        assert here.nats is not None and there.nats is not None
        assert set(here.nats.feeds) == {ours.tenant_id}  # nothing of the other tenant comes here
        assert set(there.nats.feeds) == {theirs.tenant_id}
        assert [here.nats.leading, there.nats.leading].count(True) == 1  # one bridge
        # events only for a subscriber of the right tenant, and none of another tenant's
        assert mine.queue.empty() and other.queue.empty()


async def test_a_client_that_joins_late_misses_nothing_after_its_replay_point(
    db: Database, database: ProvisionedDatabase, nats_url: str, prefix: str, make_tenant: Any
) -> None:
    member = await (await make_tenant()).member(Role.owner)
    hub = make_hub(db, database, nats_url, prefix)
    async with running(hub):
        writer = asyncio.create_task(_publish_many(db, member.tenant_id, 0, 200))
        await asyncio.sleep(0.05)
        subscriber = await follower(hub, member)  # joins while events flow
        await writer
        received = await collect(subscriber, 200, seconds=3)
        ticks = [event.data["n"] for event in received]
        # what it gets is a gapless tail: from its join on, every event once, in order
        assert ticks == list(range(ticks[0], 200)) if ticks else True
        assert ticks, "nothing arrived after joining"


async def _publish_many(db: Database, tenant_id: uuid.UUID, start: int, stop: int, pause: float = 0.0) -> None:
    for n in range(start, stop):
        await publish(db, tenant_id, n)
        if pause:
            await asyncio.sleep(pause)


async def test_nats_restart_loses_and_repeats_nothing(
    db: Database, database: ProvisionedDatabase, nats_server: NatsServer, prefix: str, make_tenant: Any
) -> None:
    member = await (await make_tenant()).member(Role.owner)
    # two hubs: the client's process and another that publishes (either may be the bridge)
    client_side, writer_side = (
        make_hub(db, database, nats_server.url, prefix),
        make_hub(db, database, nats_server.url, prefix),
    )
    async with running(client_side, writer_side):
        subscriber = await follower(client_side, member)
        writer = asyncio.create_task(_publish_many(db, member.tenant_id, 0, 120, pause=0.01))
        await asyncio.sleep(0.4)
        nats_server.stop()  # the whole NATS server goes away mid-traffic
        await asyncio.sleep(1.0)
        nats_server.start()  # and comes back on the same port, with its store
        await writer
        received = await collect(subscriber, 120, seconds=20)
        assert_once_in_order(received, 120)


async def test_a_deleted_stream_loses_and_repeats_nothing(
    db: Database, database: ProvisionedDatabase, nats_url: str, prefix: str, make_tenant: Any
) -> None:
    member = await (await make_tenant()).member(Role.owner)
    hub = make_hub(db, database, nats_url, prefix)
    async with running(hub):
        subscriber = await follower(hub, member)
        writer = asyncio.create_task(_publish_many(db, member.tenant_id, 0, 120, pause=0.01))
        await asyncio.sleep(0.4)
        admin = await nats.connect(nats_url)
        await admin.jetstream().delete_stream(f"{prefix.upper()}_EVENTS")  # an operator's mistake
        await admin.close()
        await writer
        received = await collect(subscriber, 120, seconds=20)
        assert_once_in_order(received, 120)
        assert hub.nats is not None
        await hub.nats._ensure_stream()  # the bridge re-created it


async def test_live_events_cross_processes_through_nats(
    db: Database, database: ProvisionedDatabase, nats_url: str, prefix: str, make_tenant: Any
) -> None:
    member = await (await make_tenant()).member(Role.owner)
    outsider = await (await make_tenant()).member(Role.owner)
    here, there = make_hub(db, database, nats_url, prefix), make_hub(db, database, nats_url, prefix)
    async with running(here, there):
        subscriber = await follower(here, member)
        elsewhere = await follower(here, outsider)
        await asyncio.sleep(0.1)
        there.publish_live(Event(None, member.tenant_id, "staff", None, "reply.delta", {"text": "olá"}))
        received = await collect(subscriber, 1, seconds=5)
        assert [(e.type, e.data) for e in received] == [("reply.delta", {"text": "olá"})]
        assert elsewhere.queue.empty()


async def test_three_processes_one_killed_every_client_gets_every_event_once_in_order(
    settings: Settings, nats_url: str, prefix: str, make_tenant: Any
) -> None:
    nats_env = {"PAPO_NATS_URL": nats_url, "PAPO_NATS_PREFIX": prefix}
    ports = [free_port() for _ in range(3)]
    servers = [await start_server(settings, port, **nats_env) for port in ports]
    url_a, url_b, url_c = (f"http://127.0.0.1:{port}" for port in ports)
    try:
        tenant = await make_tenant()
        alice = await tenant.member(Role.member)
        async with httpx.AsyncClient(timeout=10) as http:
            ready = (await http.get(f"{url_b}/readyz")).json()
            assert ready["checks"]["nats"] == "ok"
        # Alice's laptop starts on A and fails over to B or C; her phone watches from C.
        watchers = {
            "laptop": RealtimeClient([url_a, url_b, url_c], alice.token),
            "phone": RealtimeClient(url_c, alice.token),
        }
        received: dict[str, list[RealtimeEvent]] = {name: [] for name in watchers}
        messages = 40
        streams = {name: client.events() for name, client in watchers.items()}

        all_in = asyncio.Event()

        async def consume(name: str) -> None:
            async for item in streams[name]:
                if isinstance(item, RealtimeEvent) and item.event == "message.created":
                    received[name].append(item)
                    if all(len(events) >= messages for events in received.values()):
                        all_in.set()

        consumers = [asyncio.create_task(consume(name)) for name in watchers]
        for client in watchers.values():
            await asyncio.wait_for(client.connected.wait(), 10)
        sent = []
        async with httpx.AsyncClient(base_url=url_b, headers=alice.headers, timeout=10) as via_b:
            chat = (await via_b.post("/api/v1/sessions", json={"title": "nats", "assistant_id": None})).json()
            for i in range(messages):
                response = await via_b.post(f"/api/v1/sessions/{chat['id']}/messages", json={"content": f"m{i}"})
                assert response.status_code == 201, response.text
                sent.append(f"m{i}")
                if i == 15:
                    servers[0].send_signal(signal.SIGKILL)  # Alice's server dies mid-traffic
                await asyncio.sleep(0.02)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 20)
        for task in consumers:
            task.cancel()
        for stream in streams.values():
            with contextlib.suppress(Exception):
                await stream.aclose()
        for name, events in received.items():
            ids = [event.id for event in events]
            assert ids == sorted(set(ids)), f"{name}: events repeated or out of order"
            assert [event.data["content"] for event in events] == sent, f"{name}: events lost"
    finally:
        for process in servers:
            if process.returncode is None:
                process.terminate()
                await asyncio.wait_for(process.wait(), 10)
