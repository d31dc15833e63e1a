"""The durable queue of Cloud API webhook deliveries (`whatsapp_webhook_deliveries`), worked off in
any server process: claimed in batches, handled, deleted once handled; a delivery that fails is tried
again after a growing pause and, out of attempts, kept as a dead letter for the operator."""

from __future__ import annotations

import asyncio
import json
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog

from papo.db.engine import Database, driver
from papo.errors import DatabaseUnavailable
from papo.settings import Settings
from papo.waiting import work_when_woken
from papo.whatsapp.rows import service_principal
from papo.whatsapp.transports.base import SessionKey

log = structlog.get_logger(__name__)
Handler = Callable[[SessionKey, Sequence[Any]], Awaitable[None]]  # a number's payloads, in one transaction
INGEST_POLL_SECONDS = 2.0  # webhook deliveries queued by another process are found this fast
INGEST_BATCH = 200
INGEST_LANES = 4  # a number's senders are spread over this many lanes, worked side by side
# Lanes stored at once. Each keeps a PostgreSQL backend busy; with four, the webhooks' own queueing
# statement (what Meta waits for) queued behind them: answer p99 84-105 ms against 49-63 with two,
# at the same rate (`make bench-whatsapp`, 2 cores). One lane at a time lost a quarter of the rate.
INGEST_AT_ONCE = 2
INGEST_TRANSACTION = 20  # a lane's deliveries stored in one transaction (a sender's in order)
QUEUE_GROUP = 100  # webhooks queued by one statement at most
MAX_RETRY_SECONDS = 3600.0


def lane_of(sender: str) -> int:
    """The lane of a number's deliveries that a sender's always fall in (the same in every process)."""
    return zlib.crc32(sender.encode()) % INGEST_LANES


def answer(result: asyncio.Future[set[str]], routed: set[str] | None = None, error: Exception | None = None) -> None:
    """Tell a webhook waiting for its queueing statement how it went, unless it gave up."""
    if result.done():
        return
    if error is not None:
        result.set_exception(error)
    else:
        result.set_result(routed or set())


@dataclass(frozen=True)
class Claimed:
    """A delivery this process claimed: its id, the attempt this is, who sent it, and its payload."""

    id: int
    attempts: int
    sender: str  # the first message's wa_id ("" for receipts alone)
    payload: Any


@dataclass
class IngestQueue:
    """This process's worker on the queue: woken when this process queued a delivery, polling for others'."""

    db: Database
    settings: Settings
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # webhooks waiting for the next queueing statement: their changes, and who waits for the result
    _waiting: list[tuple[list[dict[str, Any]], asyncio.Future[set[str]]]] = field(default_factory=list)
    _queueing: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self.ready.set()

    async def queue(self, changes: list[dict[str, Any]]) -> list[str]:
        """Queue a webhook's changes ({"phone_number_id", "payload"}) for the companies holding their
        numbers, durably; the numbers queued. Wakes the worker.

        Group commit: the webhooks that arrive while a queueing statement runs are queued together
        by the next one (migration 0030's function takes any number of changes), and each is
        answered once the statement holding its changes committed. One alone goes at once."""
        result: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
        self._waiting.append((changes, result))
        if self._queueing is None or self._queueing.done():
            self._queueing = asyncio.create_task(self._queue_waiting(), name="whatsapp webhook queueing")
        routed = await result  # a webhook that gives up (its client left) cancels only its own wait
        return [change["phone_number_id"] for change in changes if change["phone_number_id"] in routed]

    async def _queue_waiting(self) -> None:
        group: list[tuple[list[dict[str, Any]], asyncio.Future[set[str]]]] = []
        try:
            while self._waiting:
                group, self._waiting = self._waiting[:QUEUE_GROUP], self._waiting[QUEUE_GROUP:]
                if len(group) == 1:
                    await self._queue_alone(*group[0])
                    continue
                try:
                    routed = await self._queue_together([change for changes, _ in group for change in changes])
                except DatabaseUnavailable as exc:  # for all of them alike (503: Meta delivers again)
                    for _, result in group:
                        answer(result, error=exc)
                except Exception:  # maybe one webhook's changes, refused by the database: each on its own
                    await asyncio.gather(*(self._queue_alone(changes, result) for changes, result in group))
                else:
                    for _, result in group:
                        answer(result, routed)
        finally:  # cancelled (the server stops): no webhook is left waiting for an answer forever
            for _, result in [*group, *self._waiting]:
                result.cancel()
            self._waiting = []

    async def _queue_together(self, changes: list[dict[str, Any]]) -> set[str]:
        """One statement for these changes: the numbers some company verified (a number is routed or
        not for the whole statement)."""
        routed = set(await self.db.call("SELECT papo_queue_whatsapp_deliveries($1::jsonb)", json.dumps(changes)))
        if routed:
            self.wake()
        return routed

    async def _queue_alone(self, changes: list[dict[str, Any]], result: asyncio.Future[set[str]]) -> None:
        try:
            answer(result, await self._queue_together(changes))
        except Exception as exc:  # this webhook is refused (5xx): Meta delivers it again
            answer(result, error=exc)

    async def run(self, handle: Handler) -> None:
        """Work off queued webhook deliveries (from any process): a sender's deliveries in order,
        several per transaction, different senders side by side; each row deleted once handled,
        claimed again if not."""
        await work_when_woken(
            self.ready, INGEST_POLL_SECONDS, partial(self._batch, handle), name="whatsapp webhook queue"
        )

    async def _batch(self, handle: Handler) -> int:
        async with self.db.transaction() as session:
            rows = await driver(session).fetch(
                "SELECT * FROM papo_claim_webhook_deliveries($1, $2)",
                INGEST_BATCH,
                self.settings.whatsapp_webhook_max_attempts,
            )
        lanes: dict[tuple[SessionKey, int], list[Claimed]] = {}
        for row in rows:
            stored = row["delivery_payload"]  # decoded JSON (the engine's codec), or its text
            payload = json.loads(stored) if isinstance(stored, str | bytes) else stored
            messages = payload.get("messages") if isinstance(payload, dict) else None
            senders = [m.get("from") for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
            sender = str(senders[0] if senders else "")
            key = SessionKey(row["delivery_tenant_id"], row["delivery_session_id"])
            lanes.setdefault((key, lane_of(sender)), []).append(
                Claimed(row["delivery_id"], row["delivery_attempts"], sender, payload)
            )
        for deliveries in lanes.values():
            # A sender's deliveries in the order they were queued (an UPDATE ... RETURNING returns
            # its rows in no set order); senders one after another, so that every transaction locks
            # contacts and conversations in the same order, and two (another process's, another
            # number's with the same customer) wait for each other instead of deadlocking.
            deliveries.sort(key=lambda delivery: (delivery.sender, delivery.id))

        handled: dict[uuid.UUID, list[int]] = {}
        # A few lanes at a time: each holds a connection, and the webhook's own answers need some.
        gate = asyncio.Semaphore(INGEST_AT_ONCE)

        async def work_lane(key: SessionKey, deliveries: list[Claimed]) -> None:
            async with gate:
                for start in range(0, len(deliveries), INGEST_TRANSACTION):
                    stored = await self._handle(handle, key, deliveries[start : start + INGEST_TRANSACTION])
                    handled.setdefault(key.tenant_id, []).extend(stored)

        await asyncio.gather(*(work_lane(key, deliveries) for (key, _), deliveries in lanes.items()))
        # One delete per company for the whole batch, not a transaction per delivery. Should it not
        # happen (the process dies first), the rows are claimed again and handled again: handling
        # is idempotent (a message is stored once by its WhatsApp id).
        for tenant_id, delivery_ids in handled.items():
            async with self.db.transaction(service_principal(tenant_id).context()) as session:
                await driver(session).execute(
                    "DELETE FROM whatsapp_webhook_deliveries WHERE tenant_id = $1 AND id = ANY($2::bigint[])",
                    tenant_id,
                    delivery_ids,
                )
        return len(rows)

    async def _handle(self, handle: Handler, key: SessionKey, deliveries: list[Claimed]) -> list[int]:
        """Deliveries of one lane in one transaction; should it fail, each in its own, so that only
        the one at fault waits for another attempt. The ids handled."""
        try:
            await handle(key, [delivery.payload for delivery in deliveries])
            return [delivery.id for delivery in deliveries]
        except Exception as exc:
            if len(deliveries) == 1:
                await self._delivery_failed(key, deliveries[0].id, deliveries[0].attempts, exc)
                return []
            log.info("a batch of webhook deliveries failed; trying them one at a time", error=str(exc))
        stored = []
        for delivery in deliveries:
            stored += await self._handle(handle, key, [delivery])
        return stored

    async def _delivery_failed(self, key: SessionKey, delivery_id: int, attempts: int, exc: Exception) -> None:
        """Record a failed attempt: tried again after a growing pause, or, out of attempts, kept as a
        dead letter for the operator (`papo whatsapp dead-letters` / `replay`)."""
        dead = attempts >= self.settings.whatsapp_webhook_max_attempts
        pause = min(self.settings.whatsapp_webhook_retry_seconds * 2 ** min(attempts - 1, 20), MAX_RETRY_SECONDS)
        # the driver's message, not SQLAlchemy's wrapper (which quotes the statement's parameters)
        cause = getattr(exc, "orig", None) or exc
        error = f"{cause.__class__.__name__}: {cause}"[:1000]
        if dead:
            log.error(
                "whatsapp webhook delivery failed for the last time; it is a dead letter",
                delivery=delivery_id,
                attempts=attempts,
                exc_info=exc,
            )
        else:
            log.warning(
                "whatsapp webhook delivery failed; it will be retried",
                delivery=delivery_id,
                attempts=attempts,
                retry_in_seconds=pause,
                exc_info=exc,
            )
        try:
            async with self.db.transaction(service_principal(key.tenant_id).context()) as session:
                await driver(session).execute(
                    "UPDATE whatsapp_webhook_deliveries SET claimed_at = NULL, last_error = $3, "
                    "retry_at = now() + make_interval(secs => $4), dead_at = CASE WHEN $5 THEN now() END "
                    "WHERE tenant_id = $1 AND id = $2",
                    key.tenant_id,
                    delivery_id,
                    error,
                    pause,
                    dead,
                )
        except Exception as failure:  # its claim expires instead: retried, or dead once out of attempts
            log.warning("whatsapp webhook delivery failure could not be recorded", error=str(failure))
