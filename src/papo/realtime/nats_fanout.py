"""Fan-out between processes through NATS JetStream (PAPO_NATS_URL), the outbox staying the truth.

Without it every process reads every tenant's events from PostgreSQL and hears every NOTIFY, so
each process's relay work grows with the whole installation. With it:

- **One bridge** per installation (whichever process holds a session advisory lock on its own
  connection, taken over within the poll interval when that process dies) reads committed events
  in id order and publishes each to `<prefix>.events.<tenant_id>` on a file-backed stream, with
  the event id as `Nats-Msg-Id` (JetStream drops a repeat within its duplicate window) and the
  previous message's id as `Nats-Expected-Last-Msg-Id` (a message after one that failed is refused
  too, so the stream never holds a later event without the earlier ones). It resumes after the
  stream's last message.
- **Feeds**: a process subscribes (an ordered JetStream consumer, new messages only) to the
  tenants its connected clients belong to, and nothing else. Every message carries the id of the
  previous event of its tenant that this bridge published (`prev`, 0 when unknown, after a bridge
  restart); a feed delivers an event straight away only when `prev` is the last id it delivered,
  and otherwise first reads what it missed from PostgreSQL (papo_tenant_events_after). Ids at or
  below the last delivered are repeats and dropped: a client gets each event once, in order.
- After the connection to NATS comes back, or a bridge reports that it re-created the stream,
  every feed is re-subscribed and catches up from PostgreSQL.
- Live events (reply deltas) go to `<prefix>.live.<tenant_id>` as plain NATS messages: best
  effort, as with NOTIFY.
- Outbox consumers (sentiment, outbound webhooks) are woken by the bridge in its own process; in
  the others they poll (an advisory lock per batch lets one process at a time work each).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, StorageType, StreamConfig

from papo.db.engine import Database, application_name
from papo.errors import DatabaseUnavailable
from papo.realtime.service import Event, bounds, read_all_events, read_tenant_events, shared_json, stamp_events
from papo.waiting import wake_or_timeout

log = structlog.get_logger(__name__)

BRIDGE_LOCK = 7070707074
BRIDGE_NAME = "papo-nats-bridge"  # in pg_stat_activity, like the realtime listener
EVENTS_CHANNEL = "papo_events"  # the stamping's NOTIFY (migration 0025)
BATCH = 500
# JetStream keeps recent events only: replay beyond that comes from PostgreSQL.
STREAM_MAX_AGE_SECONDS = 3600.0
DUPLICATE_WINDOW_SECONDS = 120.0
ACK_TIMEOUT_SECONDS = 5.0
# A feed nobody follows any more is kept this long, so a reconnecting client does not churn it.
FEED_LINGER_SECONDS = 30.0

NATS_TROUBLE = (
    nats.errors.Error,
    nats.js.errors.Error,
    asyncio.TimeoutError,
    OSError,
)


@dataclass(eq=False)
class TenantFeed:
    tenant_id: uuid.UUID
    last: int = 0
    followers: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    subscription: Any = None
    live: Any = None
    # While the feed reads a gap from PostgreSQL, what NATS brings waits here (in order).
    held: list[tuple[Event, int]] | None = None
    linger: asyncio.TimerHandle | None = None
    failure: BaseException | None = None  # its subscription failed (see NatsFanout.follow)


class NatsFanout:
    def __init__(
        self,
        db: Database,
        url: str,
        prefix: str,
        listen_dsn: str,
        *,
        poll_seconds: float,
        deliver: Callable[[Event], None],
        followers: list[asyncio.Event],
        origin: str,
    ) -> None:
        self.db = db
        self.url = url
        self.prefix = prefix
        self.stream = f"{prefix.upper()}_EVENTS"
        self.listen_dsn = listen_dsn
        self.poll_seconds = poll_seconds
        self.deliver = deliver
        self.followers = followers
        self.origin = origin  # the hub's: its live events are not handed out twice
        self.nc: NatsClient | None = None
        self.js: JetStreamContext | None = None
        self.feeds: dict[uuid.UUID, TenantFeed] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.leading = False
        self.resubscribe_wake = asyncio.Event()

    # ---- connection ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and make sure the stream exists; a NATS that cannot be reached stops start-up."""
        try:
            self.nc = await nats.connect(
                self.url,
                name=application_name("papo"),
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=5,
                allow_reconnect=True,
                reconnected_cb=self._reconnected,
                disconnected_cb=self._disconnected,
                error_cb=self._error,
            )
        except Exception as exc:
            raise RuntimeError(f"cannot reach NATS at PAPO_NATS_URL ({type(exc).__name__}: {exc})") from exc
        self.js = self.nc.jetstream(timeout=ACK_TIMEOUT_SECONDS)
        await self._ensure_stream()
        await self.nc.subscribe(self._control_subject, cb=self._control)
        self.tasks = [
            asyncio.create_task(self._bridge_forever(), name="papo-nats-bridge"),
            asyncio.create_task(self._resubscriber(), name="papo-nats-resubscriber"),
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def _control_subject(self) -> str:
        return f"{self.prefix}.control"

    def _events_subject(self, tenant_id: uuid.UUID) -> str:
        return f"{self.prefix}.events.{tenant_id}"

    def _live_subject(self, tenant_id: uuid.UUID) -> str:
        return f"{self.prefix}.live.{tenant_id}"

    async def _ensure_stream(self) -> bool:
        """Create the stream if it is missing; True when it had to be created."""
        assert self.js is not None
        try:
            await self.js.stream_info(self.stream)
            return False
        except nats.js.errors.NotFoundError:
            pass
        await self.js.add_stream(
            StreamConfig(
                name=self.stream,
                subjects=[f"{self.prefix}.events.>"],
                storage=StorageType.FILE,
                max_age=STREAM_MAX_AGE_SECONDS,
                duplicate_window=DUPLICATE_WINDOW_SECONDS,
            )
        )
        log.info("NATS stream created", stream=self.stream)
        return True

    async def _reconnected(self) -> None:
        log.info("NATS connection back; feeds catch up from the database")
        self.resubscribe_wake.set()

    async def _disconnected(self) -> None:
        log.warning("NATS connection lost; reconnecting")

    async def _error(self, exc: Exception) -> None:
        log.warning("NATS error", error=str(exc) or type(exc).__name__)
        if isinstance(exc, nats.errors.SlowConsumerError):
            self.resubscribe_wake.set()  # something was dropped: fill it from the database

    async def _control(self, msg: Msg) -> None:
        if msg.data == b"stream-reset":
            self.resubscribe_wake.set()

    # ---- the bridge: outbox -> stream ------------------------------------------------------------

    async def _bridge_forever(self) -> None:
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(
                    self.listen_dsn, server_settings={"application_name": application_name(BRIDGE_NAME)}
                )
                if await connection.fetchval("SELECT pg_try_advisory_lock($1)", BRIDGE_LOCK):
                    await self._lead(connection)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, DatabaseUnavailable, *NATS_TROUBLE) as exc:
                log.warning("NATS bridge interrupted; retrying", error=str(exc) or type(exc).__name__)
            finally:
                self.leading = False
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close()
            await asyncio.sleep(self.poll_seconds)

    async def _lead(self, connection: asyncpg.Connection) -> None:
        wake = asyncio.Event()
        lost = asyncio.Event()
        await connection.add_listener(EVENTS_CHANNEL, lambda *_: wake.set())

        def connection_lost(*_: Any) -> None:
            lost.set()
            wake.set()

        connection.add_termination_listener(connection_lost)
        self.leading = True
        log.info("this process bridges events to NATS")
        last, chained = await self._resume_point()
        prev_of_tenant: dict[uuid.UUID, int] = {}
        while not lost.is_set() and not connection.is_closed():
            await stamp_events(self.db)  # what a publisher that died before stamping left
            async with self.db.transaction() as session:
                events = await read_all_events(session, last, BATCH)
            if events:
                try:
                    await self._publish(events, chained, prev_of_tenant)
                except NATS_TROUBLE as exc:
                    log.warning("could not publish events to NATS; resuming", error=str(exc) or type(exc).__name__)
                    last, chained = await self._resume_point()
                    prev_of_tenant.clear()
                    await asyncio.sleep(min(1.0, self.poll_seconds))
                    continue
                last = chained = events[-1].id or last
                for follower in self.followers:
                    follower.set()
            if len(events) < BATCH:
                await wake_or_timeout(wake, self.poll_seconds)
                wake.clear()

    async def _resume_point(self) -> tuple[int, int | None]:
        """Where to go on: after the stream's last message (and chain to it), or after the newest
        event when the stream is empty (feeds fill anything older from the database). A stream
        that is gone is made again, and every process told to re-subscribe."""
        assert self.js is not None
        assert self.nc is not None
        if await self._ensure_stream():
            await self.nc.publish(self._control_subject, b"stream-reset")
        info = await self.js.stream_info(self.stream)
        if info.state.messages and info.state.last_seq:
            message = await self.js.get_msg(self.stream, seq=info.state.last_seq)
            headers = message.headers or {}
            if (msg_id := headers.get("Nats-Msg-Id", "")).isdigit():
                return int(msg_id), int(msg_id)
        async with self.db.transaction() as session:
            _, head = await bounds(session)
        return head, None

    async def _publish(self, events: list[Event], chained: int | None, prev_of_tenant: dict[uuid.UUID, int]) -> None:
        assert self.js is not None
        acks = []
        for event in events:
            assert event.id is not None
            headers = {"Nats-Msg-Id": str(event.id)}
            if chained is not None:
                headers["Nats-Expected-Last-Msg-Id"] = str(chained)
            prev = prev_of_tenant.get(event.tenant_id, 0)
            acks.append(
                await self.js.publish_async(
                    self._events_subject(event.tenant_id), shared_json(event, prev=prev).encode(), headers=headers
                )
            )
            prev_of_tenant[event.tenant_id] = chained = event.id
        async with asyncio.timeout(ACK_TIMEOUT_SECONDS):
            await asyncio.gather(*acks)

    # ---- feeds: stream -> this process's clients -------------------------------------------------

    async def follow(self, tenant_id: uuid.UUID) -> None:
        """Count a client of `tenant_id` here; returns once its feed is subscribed, so a replay read
        after this cannot miss what comes next."""
        feed = self.feeds.get(tenant_id)
        if feed is None:
            feed = self.feeds[tenant_id] = TenantFeed(tenant_id)
            feed.followers += 1
            try:
                await self._subscribe(feed)
            except BaseException as exc:
                # gone, so the next client tries afresh; those waiting on this one fail like it did
                del self.feeds[tenant_id]
                feed.failure = exc
                feed.ready.set()
                raise
            feed.ready.set()
            return
        feed.followers += 1
        if feed.linger is not None:
            feed.linger.cancel()
            feed.linger = None
        await feed.ready.wait()
        if feed.failure is not None:
            raise nats.errors.Error("the tenant's feed could not be subscribed") from feed.failure

    def unfollow(self, tenant_id: uuid.UUID) -> None:
        feed = self.feeds.get(tenant_id)
        if feed is None:
            return
        feed.followers -= 1
        if feed.followers <= 0 and feed.linger is None:
            feed.linger = asyncio.get_running_loop().call_later(FEED_LINGER_SECONDS, self._drop_idle, feed)

    def _drop_idle(self, feed: TenantFeed) -> None:
        feed.linger = None
        if feed.followers > 0 or self.feeds.get(feed.tenant_id) is not feed:
            return
        del self.feeds[feed.tenant_id]
        asyncio.get_running_loop().create_task(self._unsubscribe(feed))

    async def _subscribe(self, feed: TenantFeed) -> None:
        """Subscribe first, then take the database's head as the feed's position: anything at or
        below it a client replays from the database; anything above arrives on the subscription."""
        assert self.js is not None
        assert self.nc is not None

        async def received(msg: Msg) -> None:
            await self._received(feed, msg)

        feed.subscription = await self.js.subscribe(
            self._events_subject(feed.tenant_id),
            stream=self.stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            cb=received,
        )
        feed.live = await self.nc.subscribe(self._live_subject(feed.tenant_id), cb=self._live_received)
        if feed.last == 0:
            async with self.db.transaction() as session:
                _, feed.last = await bounds(session)

    async def _unsubscribe(self, feed: TenantFeed) -> None:
        for subscription in (feed.subscription, feed.live):
            if subscription is not None:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
        feed.subscription = feed.live = None

    async def _received(self, feed: TenantFeed, msg: Msg) -> None:
        try:
            raw = json.loads(msg.data)
            event, prev = Event.from_shared(raw), int(raw.get("prev") or 0)
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed event from NATS", subject=msg.subject)
            return
        if event.tenant_id != feed.tenant_id:
            return
        if feed.held is not None:
            feed.held.append((event, prev))
            return
        assert event.id is not None
        if event.id <= feed.last:
            return
        # `prev` is the tenant's event before this one: nothing of the tenant lies between them, so
        # when the feed is at or past it, nothing was missed (0: unknown, unless nothing ever was)
        if prev <= feed.last and (prev > 0 or feed.last == 0):
            self._hand_out(feed, event)
            return
        await self._catch_up(feed)  # a gap (or a bridge that restarted): fill it from the database

    def _hand_out(self, feed: TenantFeed, event: Event) -> None:
        assert event.id is not None
        if event.id > feed.last:
            feed.last = event.id
            self.deliver(event)

    async def _catch_up(self, feed: TenantFeed) -> None:
        """Deliver what the database has after the feed's position, then what NATS brought meanwhile."""
        if feed.held is not None:
            return
        feed.held = []
        try:
            while True:
                try:
                    async with self.db.transaction() as session:
                        events = await read_tenant_events(session, feed.tenant_id, feed.last, BATCH)
                except (OSError, asyncpg.PostgresError, DatabaseUnavailable) as exc:
                    log.warning("feed could not catch up; retrying", error=str(exc) or type(exc).__name__)
                    await asyncio.sleep(1)
                    continue
                for event in events:
                    self._hand_out(feed, event)
                if len(events) < BATCH:
                    break
        finally:
            held, feed.held = feed.held, None
            for event, _ in held:
                self._hand_out(feed, event)

    async def _resubscriber(self) -> None:
        """After a reconnect or a reset stream: fresh subscriptions, then each feed catches up."""
        while True:
            await self.resubscribe_wake.wait()
            self.resubscribe_wake.clear()
            for feed in list(self.feeds.values()):
                try:
                    await self._unsubscribe(feed)
                    await self._subscribe(feed)
                    await self._catch_up(feed)
                except NATS_TROUBLE as exc:
                    log.warning("could not re-subscribe a feed; retrying", error=str(exc) or type(exc).__name__)
                    self.resubscribe_wake.set()
                    await asyncio.sleep(1)
                    break

    # ---- live events -----------------------------------------------------------------------------

    def publish_live(self, event: Event) -> None:
        if self.nc is None or not self.nc.is_connected:
            return  # best effort, like NOTIFY: the durable state reaches readers through the outbox
        payload = shared_json(event, origin=self.origin).encode()
        asyncio.get_running_loop().create_task(self._send_live(self._live_subject(event.tenant_id), payload))

    async def _send_live(self, subject: str, payload: bytes) -> None:
        assert self.nc is not None
        with contextlib.suppress(*NATS_TROUBLE):
            await self.nc.publish(subject, payload)

    async def _live_received(self, msg: Msg) -> None:
        try:
            raw = json.loads(msg.data)
            if raw["origin"] == self.origin:
                return
            event = Event.from_shared(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed live event from NATS", subject=msg.subject)
            return
        if msg.subject == self._live_subject(event.tenant_id):  # only what names its subject's tenant
            self.deliver(event)
