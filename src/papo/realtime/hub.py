"""Per-process fan-out: one LISTEN connection wakes a relay that reads new events from the outbox and
hands each to the local subscribers allowed to see it.

NOTIFY carries only the newest id, as a wake-up; bodies always come from the outbox, so a lost or
coalesced notification costs nothing. A periodic poll covers a listening connection that died
silently, and after a reconnect the relay simply reads on from the last id it handled.

Live events (reply deltas) skip the outbox: the process that makes one hands it to its own
subscribers at once, and NOTIFYs the other processes with the event itself as payload, batched.
Losing one costs a reader nothing it cannot refetch: the durable state lands in the outbox too.

The same connection hears what withdraws access (papo.realtime.access): each stream a notice
concerns is held and re-checked, and closed if it lost access; every stream is also re-checked on
a timer and after the listener reconnects. Streams per member are capped per process."""

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

from papo.auth.access_notices import ACCESS_CHANNEL, Grant, Notice
from papo.auth.service import Principal
from papo.db.engine import Database, application_name
from papo.errors import DatabaseUnavailable, QuotaExceeded
from papo.ops.metrics import REALTIME_CONNECTIONS, REALTIME_EVENT_LAG
from papo.realtime.access import standings, verdict
from papo.realtime.codes import CLOSE_GOING_AWAY, CLOSE_TRY_AGAIN
from papo.realtime.nats_fanout import NATS_TROUBLE, NatsFanout
from papo.realtime.service import Event, bounds, relay_events, shared_json, stamp_events
from papo.waiting import wake_or_timeout, work_when_woken

log = structlog.get_logger(__name__)
CHANNEL = "papo_events"
LIVE_CHANNEL = "papo_live"
LISTENER_NAME = "papo-realtime-listener"  # how operators (and tests) spot it in pg_stat_activity (":<pid>")
MISSED = "*"
BATCH = 500
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; publishers keep live events well under.
MAX_LIVE_PAYLOAD_BYTES = 7900
# A stream held for an access re-check that cannot be done (the database is away) closes after this
# long rather than go on serving what it may no longer see; the client reconnects and re-authenticates.
REVIEW_PATIENCE_SECONDS = 10.0


@dataclass(eq=False)
class Subscriber:
    """One open WebSocket or SSE stream. Its queue is bounded: a consumer that falls behind is
    told so and disconnected (it resumes by replay) instead of growing memory without limit."""

    principal: Principal
    capacity: int
    transport: str
    web_session_id: uuid.UUID | None = None  # the browser session it came from, if any
    queue: asyncio.Queue[Event | None] = field(init=False)  # None: a wake-up to look at its state
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    ended: tuple[int, str] | None = None  # (close code, reason) once the stream must end
    following: bool = False  # counted by its tenant's NATS feed (EventHub.join_feed)
    # Set while the stream's access stands; cleared while a re-check is due, so that nothing goes
    # out to a principal that may just have been demoted, removed or signed out.
    cleared: asyncio.Event = field(default_factory=asyncio.Event)
    held_since: float | None = None

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.capacity)
        self.cleared.set()

    def grant(self) -> Grant:
        return Grant.of(self.principal, self.web_session_id)

    def end(self, code: int, reason: str) -> None:
        if self.ended is None:
            self.ended = (code, reason)
        self.closing.set()
        self.cleared.set()
        self.wake()

    def wake(self) -> None:
        """Make the stream look at its state (an ending, a heartbeat or the token's expiry due)."""
        with contextlib.suppress(asyncio.QueueFull):  # a full queue is being drained: it sees its state
            self.queue.put_nowait(None)

    def hold(self) -> None:
        if self.cleared.is_set() and self.ended is None:
            self.cleared.clear()
            self.held_since = time.monotonic()

    def release(self) -> None:
        self.cleared.set()
        self.held_since = None

    def offer(self, event: Event) -> None:
        p = self.principal
        if self.overflowed.is_set() or not event.visible_to(p.tenant_id, p.user_id, p.role):
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed.set()


class StreamEnded(Exception):
    """A stream must end now, with this close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class TooManyStreams(QuotaExceeded):
    def __init__(self, limit: int) -> None:
        super().__init__(f"too many open streams for this user (at most {limit} per server); close one first")


def _payload_only(callback: Callable[[str], None]) -> Callable[..., None]:
    def listener(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
        callback(payload)

    return listener


class EventHub:
    def __init__(
        self,
        db: Database,
        listen_dsn: str,
        *,
        poll_seconds: float,
        queue_size: int,
        access_check_seconds: float = 60.0,
        nats_url: str = "",
        nats_prefix: str = "papo",
    ) -> None:
        self.db = db
        self.listen_dsn = listen_dsn
        self.poll_seconds = poll_seconds
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self.by_tenant: dict[uuid.UUID, set[Subscriber]] = {}
        # a member's streams: their own events go to these only, not past every stream of the tenant
        self.by_member: dict[tuple[uuid.UUID, str | None], set[Subscriber]] = {}
        self.access_check_seconds = max(1.0, access_check_seconds)
        self.to_review: set[Subscriber] = set()
        self.review_all = False
        self.access_wake = asyncio.Event()
        self.access_task: asyncio.Task[None] | None = None
        self.last_id = 0
        self.wake = asyncio.Event()
        self.stamped_notice = False  # the relay was woken by a stamping's NOTIFY
        self.listener: asyncpg.Connection | None = None
        self.followers: list[asyncio.Event] = []
        self.channels: dict[str, Callable[[str], None]] = {}
        self.task: asyncio.Task[None] | None = None
        # Live events made here, waiting for the notifier; tagged so this process skips its own.
        self.origin = uuid.uuid4().hex
        self.outgoing: list[str] = []
        self.outgoing_ready = asyncio.Event()
        self.notifier: asyncio.Task[None] | None = None
        # With NATS, other processes' events come through it, for the tenants followed here only.
        self.nats: NatsFanout | None = None
        if nats_url:
            self.nats = NatsFanout(
                db,
                nats_url,
                nats_prefix,
                listen_dsn,
                poll_seconds=poll_seconds,
                deliver=self._deliver,
                followers=self.followers,
                origin=self.origin,
            )

    async def start(self) -> None:
        async with self.db.transaction() as session:
            _, self.last_id = await bounds(session)
        if self.nats is not None:
            await self.nats.start()
        await self._listen()
        self.task = asyncio.create_task(self._run(), name="papo-event-relay")
        self.notifier = asyncio.create_task(self._notify_others(), name="papo-live-notifier")
        self.access_task = asyncio.create_task(self._watch_access(), name="papo-realtime-access")

    async def stop(self) -> None:
        for subscriber in self.subscribers:
            subscriber.end(CLOSE_GOING_AWAY, "server shutting down")
        for task in (self.task, self.notifier, self.access_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.listener is not None:
            with contextlib.suppress(Exception):
                await self.listener.close()
        if self.nats is not None:
            await self.nats.stop()

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

    def streams_of(self, principal: Principal) -> int:
        return len(self.by_member.get((principal.tenant_id, principal.user_id), ()))

    def subscribe(
        self,
        principal: Principal,
        transport: str,
        *,
        web_session_id: uuid.UUID | None = None,
        max_per_user: int = 0,
    ) -> Subscriber:
        """A new stream, held until its access is confirmed once more: a change committed between
        authenticating it and this moment was announced before anyone here listened for it."""
        if max_per_user > 0 and self.streams_of(principal) >= max_per_user:
            raise TooManyStreams(max_per_user)
        subscriber = Subscriber(principal, self.queue_size, transport, web_session_id)
        self.subscribers.add(subscriber)
        self.by_tenant.setdefault(principal.tenant_id, set()).add(subscriber)
        self.by_member.setdefault((principal.tenant_id, principal.user_id), set()).add(subscriber)
        REALTIME_CONNECTIONS.labels(transport).inc()
        subscriber.hold()
        self.to_review.add(subscriber)
        self.access_wake.set()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.discard(subscriber)
            tenant_id = subscriber.principal.tenant_id
            local = self.by_tenant.get(tenant_id)
            if local is not None:
                local.discard(subscriber)
                if not local:
                    del self.by_tenant[tenant_id]
            if self.nats is not None and subscriber.following:
                self.nats.unfollow(tenant_id)
            self.to_review.discard(subscriber)
            key = (subscriber.principal.tenant_id, subscriber.principal.user_id)
            own = self.by_member.get(key)
            if own is not None:
                own.discard(subscriber)
                if not own:
                    del self.by_member[key]
            REALTIME_CONNECTIONS.labels(subscriber.transport).dec()

    async def join_feed(self, subscriber: Subscriber) -> None:
        """Before a stream replays: with NATS, make sure its tenant's feed runs here, so nothing
        committed after the replay's read is missed."""
        if self.nats is None or subscriber.following:
            return
        try:
            await self.nats.follow(subscriber.principal.tenant_id)
        except NATS_TROUBLE as exc:
            log.warning("could not follow a tenant through NATS", error=str(exc) or type(exc).__name__)
            raise StreamEnded(CLOSE_TRY_AGAIN, "realtime is briefly unavailable; reconnect") from exc
        if subscriber in self.subscribers:
            subscriber.following = True
        else:  # it left while the feed was being set up
            self.nats.unfollow(subscriber.principal.tenant_id)

    def publish_live(self, event: Event) -> None:
        """Fan a live event out now to this process's subscribers, and soon to the other processes'."""
        self._deliver(event)
        if self.nats is not None:
            self.nats.publish_live(event)
            return
        payload = shared_json(event, origin=self.origin)
        if len(payload.encode()) > MAX_LIVE_PAYLOAD_BYTES:
            log.warning("live event too large to share with other processes", type=event.type)
            return
        self.outgoing.append(payload)
        self.outgoing_ready.set()

    def _deliver(self, event: Event) -> None:
        if event.audience == "user":
            candidates = self.by_member.get((event.tenant_id, event.user_id), ())
        else:  # staff events: every stream of the tenant, each checked for its role
            candidates = self.by_tenant.get(event.tenant_id, ())
        for subscriber in list(candidates):
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
            event = Event.from_shared(message)
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed live event notification")
            return
        self._deliver(event)

    async def _listen(self) -> None:
        try:
            self.listener = await asyncpg.connect(
                self.listen_dsn, server_settings={"application_name": application_name(LISTENER_NAME)}
            )
            if self.nats is None:  # with NATS, only its bridge listens for new events
                await self.listener.add_listener(CHANNEL, self._notified)
                await self.listener.add_listener(LIVE_CHANNEL, self._live_notified)
            await self.listener.add_listener(ACCESS_CHANNEL, self._access_notified)
            for channel, callback in self.channels.items():
                await self.listener.add_listener(channel, _payload_only(callback))
                callback(MISSED)  # notifications sent while not listening are lost
            self.listener.add_termination_listener(self._terminated)
            self.review_all = True  # so are access changes: re-check every open stream
            self.access_wake.set()
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("realtime listener could not connect; polling until it can", error=str(exc))
            self.listener = None
        self.wake.set()  # catch up on whatever was committed while not listening

    def _notified(self, *_: Any) -> None:
        self.stamped_notice = True
        self.wake.set()

    def _access_notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        notice = Notice.parse(payload)
        if notice is None:
            log.warning("malformed access notice; re-checking every stream")
            self.review_all = True
            self.access_wake.set()
            return
        for subscriber in self.subscribers:
            if notice.concerns(subscriber.grant()):
                subscriber.hold()  # synchronously, before any later event can be handed out
                self.to_review.add(subscriber)
        if self.to_review:
            self.access_wake.set()

    async def _watch_access(self) -> None:
        """Re-check held streams as soon as they are held, and every stream each interval."""
        next_round = time.monotonic() + self.access_check_seconds
        while True:
            await wake_or_timeout(self.access_wake, max(0.0, next_round - time.monotonic()))
            self.access_wake.clear()
            batch, self.to_review = self.to_review, set()
            if self.review_all or time.monotonic() >= next_round:
                self.review_all = False
                next_round = time.monotonic() + self.access_check_seconds
                batch |= self.subscribers
            batch &= self.subscribers
            if not batch:
                continue
            try:
                await self._review(batch)
            except Exception as exc:  # the watch must outlive any one failure: it guards every stream
                log.warning("could not re-check open streams' access; retrying", error=str(exc))
                self._retry_later(batch)
                await asyncio.sleep(1)

    async def _review(self, batch: set[Subscriber]) -> None:
        grants = {subscriber: subscriber.grant() for subscriber in batch}
        async with self.db.transaction() as session:
            found = await standings(session, grants.values())
        for subscriber, grant in grants.items():
            standing = found.get(grant)
            outcome = verdict(grant, standing) if standing is not None else None
            if outcome is not None:
                log.info("realtime stream closed", reason=outcome[1], tenant_id=str(grant.tenant_id))
                subscriber.end(*outcome)
            if subscriber not in self.to_review:  # a notice during the query: held for the next round
                subscriber.release()

    def _retry_later(self, batch: set[Subscriber]) -> None:
        now = time.monotonic()
        for subscriber in batch:
            if subscriber.held_since is None:
                continue  # a routine round: the next one tries again
            if now - subscriber.held_since > REVIEW_PATIENCE_SECONDS:
                subscriber.end(CLOSE_TRY_AGAIN, "could not confirm your access just now; reconnect")
            else:
                self.to_review.add(subscriber)
        if self.to_review:
            self.access_wake.set()

    def _terminated(self, *_: Any) -> None:
        log.warning("realtime listener connection lost; reconnecting")
        self.listener = None
        self.wake.set()

    async def _run(self) -> None:
        await work_when_woken(
            self.wake,
            self.poll_seconds,
            self._listen_and_relay,
            name="realtime relay",
            retry_on=(OSError, asyncpg.PostgresError, DatabaseUnavailable),
        )

    async def _listen_and_relay(self) -> None:
        """Reconnect the listener if it dropped, then relay everything committed since the last round."""
        if self.listener is None or self.listener.is_closed():
            await self._listen()
        await self._relay()

    async def _relay(self) -> None:
        if self.nats is not None:
            return  # events arrive through the tenants' feeds
        if not self.stamped_notice:
            # a poll or a reconnect, not a stamping's NOTIFY: stamp what a publisher that died between
            # its commit and its stamping left unnumbered (after a NOTIFY, the stamping just ran)
            await stamp_events(self.db)
        self.stamped_notice = False
        while True:
            events = await relay_events(self.db, self.last_id, BATCH)
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
