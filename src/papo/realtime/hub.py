"""Per-process fan-out: one LISTEN connection wakes a relay that reads new events from the outbox and
hands each to the local subscribers allowed to see it.

NOTIFY carries only the newest id, as a wake-up; bodies always come from the outbox, so a lost or
coalesced notification costs nothing. A periodic poll covers a listening connection that died
silently, and after a reconnect the relay simply reads on from the last id it handled.

Live events (reply deltas) skip the outbox: the process that makes one hands it to its own
subscribers at once, and NOTIFYs the other processes with the event itself as payload, batched.
Losing one costs a reader nothing it cannot refetch: the durable state lands in the outbox too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from papo.auth.service import Principal
from papo.db.engine import Database, application_name
from papo.errors import DatabaseUnavailable
from papo.ops.metrics import REALTIME_CONNECTIONS, REALTIME_EVENT_LAG
from papo.realtime.service import Event, bounds, read_all_events
from papo.waiting import wake_or_timeout

log = structlog.get_logger(__name__)
CHANNEL = "papo_events"
LIVE_CHANNEL = "papo_live"
LISTENER_NAME = "papo-realtime-listener"  # how operators (and tests) spot it in pg_stat_activity (":<pid>")
MISSED = "*"
BATCH = 500
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; publishers keep live events well under.
MAX_LIVE_PAYLOAD_BYTES = 7900


@dataclass(eq=False)
class Subscriber:
    """One open WebSocket or SSE stream. Its queue is bounded: a consumer that falls behind is
    told so and disconnected (it resumes by replay) instead of growing memory without limit."""

    principal: Principal
    capacity: int
    transport: str
    queue: asyncio.Queue[Event] = field(init=False)
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.capacity)

    def offer(self, event: Event) -> None:
        p = self.principal
        if self.overflowed.is_set() or not event.visible_to(p.tenant_id, p.user_id, p.role):
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed.set()


def _payload_only(callback: Callable[[str], None]) -> Callable[..., None]:
    def listener(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
        callback(payload)

    return listener


class EventHub:
    def __init__(self, db: Database, listen_dsn: str, *, poll_seconds: float, queue_size: int) -> None:
        self.db = db
        self.listen_dsn = listen_dsn
        self.poll_seconds = poll_seconds
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self.last_id = 0
        self.wake = asyncio.Event()
        self.listener: asyncpg.Connection | None = None
        self.followers: list[asyncio.Event] = []
        self.channels: dict[str, Callable[[str], None]] = {}
        self.task: asyncio.Task[None] | None = None
        # Live events made here, waiting for the notifier; tagged so this process skips its own.
        self.origin = uuid.uuid4().hex
        self.outgoing: list[str] = []
        self.outgoing_ready = asyncio.Event()
        self.notifier: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async with self.db.transaction() as session:
            _, self.last_id = await bounds(session)
        await self._listen()
        self.task = asyncio.create_task(self._run(), name="papo-event-relay")
        self.notifier = asyncio.create_task(self._notify_others(), name="papo-live-notifier")

    async def stop(self) -> None:
        for subscriber in self.subscribers:
            subscriber.closing.set()
        for task in (self.task, self.notifier):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.listener is not None:
            with contextlib.suppress(Exception):
                await self.listener.close()

    def on_notify(self, channel: str, callback: Callable[[str], None]) -> None:
        """Also LISTEN on `channel` (before start), handing each payload to `callback`; MISSED each time
        the listener (re)connects, since what was sent meanwhile is lost."""
        self.channels[channel] = callback

    def follow(self, wake: asyncio.Event) -> None:
        """Have `wake` set whenever the relay has read newly committed events (outbox consumers)."""
        self.followers.append(wake)

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up (without it, other processes' events wait for the poll)."""
        return self.listener is not None and not self.listener.is_closed()

    def subscribe(self, principal: Principal, transport: str) -> Subscriber:
        subscriber = Subscriber(principal, self.queue_size, transport)
        self.subscribers.add(subscriber)
        REALTIME_CONNECTIONS.labels(transport).inc()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.discard(subscriber)
            REALTIME_CONNECTIONS.labels(subscriber.transport).dec()

    def publish_live(self, event: Event) -> None:
        """Fan a live event out now to this process's subscribers, and soon to the other processes'."""
        self._deliver(event)
        payload = json.dumps(
            {
                "origin": self.origin,
                "tenant_id": str(event.tenant_id),
                "audience": event.audience,
                "user_id": event.user_id,
                "type": event.type,
                "data": event.data,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )
        if len(payload.encode()) > MAX_LIVE_PAYLOAD_BYTES:
            log.warning("live event too large to share with other processes", type=event.type)
            return
        self.outgoing.append(payload)
        self.outgoing_ready.set()

    def _deliver(self, event: Event) -> None:
        for subscriber in list(self.subscribers):
            subscriber.offer(event)

    async def _notify_others(self) -> None:
        """One NOTIFY statement carries everything published since the last one went out."""
        while True:
            await self.outgoing_ready.wait()
            self.outgoing_ready.clear()
            batch, self.outgoing = self.outgoing, []
            listener = self.listener
            if listener is None or listener.is_closed():
                continue  # live events are best effort; the relay reconnects the listener
            try:
                await listener.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", LIVE_CHANNEL, batch)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("could not share live events with other processes", error=str(exc))

    def _live_notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            if message["origin"] == self.origin:
                return
            event = Event(
                id=None,
                tenant_id=uuid.UUID(message["tenant_id"]),
                audience=message["audience"],
                user_id=message["user_id"],
                type=message["type"],
                data=message["data"],
            )
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed live event notification")
            return
        self._deliver(event)

    async def _listen(self) -> None:
        try:
            self.listener = await asyncpg.connect(
                self.listen_dsn, server_settings={"application_name": application_name(LISTENER_NAME)}
            )
            await self.listener.add_listener(CHANNEL, self._notified)
            await self.listener.add_listener(LIVE_CHANNEL, self._live_notified)
            for channel, callback in self.channels.items():
                await self.listener.add_listener(channel, _payload_only(callback))
                callback(MISSED)  # notifications sent while not listening are lost
            self.listener.add_termination_listener(self._terminated)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("realtime listener could not connect; polling until it can", error=str(exc))
            self.listener = None
        self.wake.set()  # catch up on whatever was committed while not listening

    def _notified(self, *_: Any) -> None:
        self.wake.set()

    def _terminated(self, *_: Any) -> None:
        log.warning("realtime listener connection lost; reconnecting")
        self.listener = None
        self.wake.set()

    async def _run(self) -> None:
        while True:
            await wake_or_timeout(self.wake, self.poll_seconds)
            self.wake.clear()
            try:
                if self.listener is None or self.listener.is_closed():
                    await self._listen()
                await self._relay()
            except (OSError, asyncpg.PostgresError, DatabaseUnavailable) as exc:
                log.warning("realtime relay failed; retrying", error=str(exc))
                await asyncio.sleep(1)

    async def _relay(self) -> None:
        while True:
            async with self.db.transaction() as session:
                events = await read_all_events(session, self.last_id, BATCH)
            now = time.time()
            for follower in self.followers if events else ():
                follower.set()
            for event in events:
                self._deliver(event)
                assert event.id is not None
                self.last_id = event.id
                if event.created_at is not None:
                    REALTIME_EVENT_LAG.observe(max(0.0, now - event.created_at.timestamp()))
            if len(events) < BATCH:
                return
