"""The outbox: events recorded with the change that caused them, published at commit, read in order.

Services call `emit()`; the unit of work publishes everything emitted, once, in the same round trip
as its COMMIT, so rolled-back work leaves no event. Committed events get their positions (ids, in
commit order) right after, from a stamping: migration 0025 says why that order is safe to read.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from papo.db.engine import Database, after_commit_work, commit_with, driver, sql_literal

log = structlog.get_logger(__name__)
PENDING = "pending_events"
STAFF_ROLES = frozenset({"owner", "admin", "agent"})


@dataclass(frozen=True)
class Event:
    """An event for subscribers. Outbox events have an id and can be replayed; live events (id None,
    e.g. reply deltas) are only fanned out to whoever is connected, and never stored."""

    id: int | None
    tenant_id: uuid.UUID
    audience: str
    user_id: str | None
    type: str
    data: dict[str, Any]
    created_at: datetime | None = None  # known to the relay, which measures how late events arrive

    def visible_to(self, tenant_id: uuid.UUID, user_id: str | None, role: str) -> bool:
        """The RLS rule of the events table, for the relay that reads across tenants."""
        if self.tenant_id != tenant_id:
            return False
        if self.audience == "user":
            return user_id is not None and self.user_id == user_id
        return role in STAFF_ROLES

    def wire(self) -> dict[str, Any]:
        if self.id is None:
            return {"type": "live", "event": self.type, "data": self.data}
        return {"type": "event", "id": self.id, "event": self.type, "data": self.data}

    @cached_property
    def wire_text(self) -> str:
        """`wire()` as JSON, made once however many subscribers the event goes to."""
        return json.dumps(self.wire(), separators=(",", ":"), default=str)

    @classmethod
    def from_shared(cls, raw: dict[str, Any]) -> Event:
        """An event another process shared (`shared_json`); KeyError, ValueError or TypeError when
        the message is malformed."""
        created = raw["created_at"]
        return cls(
            id=raw["id"],
            tenant_id=uuid.UUID(raw["tenant_id"]),
            audience=raw["audience"],
            user_id=raw["user_id"],
            type=raw["type"],
            data=raw["data"],
            created_at=datetime.fromisoformat(created) if created else None,
        )


def shared_json(event: Event, **extra: Any) -> str:
    """How processes pass an event to each other (NOTIFY payloads, NATS messages), with `extra`
    fields of the carrier's own (the sending process, the tenant's previous event)."""
    shared = {
        "id": event.id,
        "tenant_id": str(event.tenant_id),
        "audience": event.audience,
        "user_id": event.user_id,
        "type": event.type,
        "data": event.data,
        "created_at": event.created_at.isoformat() if event.created_at else None,
    }
    return json.dumps({**shared, **extra}, separators=(",", ":"), ensure_ascii=False)


def emit(
    session: AsyncSession,
    event_type: str,
    data: dict[str, Any],
    *,
    tenant_id: uuid.UUID,
    user_id: str | None,
) -> None:
    """Record an event for `user_id`'s stream (or, with user_id None, the tenant staff's)."""
    pending: list[dict[str, Any]] = session.info.setdefault(PENDING, [])
    pending.append(
        {
            "tenant_id": str(tenant_id),
            "audience": "user" if user_id is not None else "staff",
            "user_id": user_id,
            "type": event_type,
            "payload": data,
        }
    )
    commit_with(session, _publish)
    after_commit_work(session, _stamp_soon)


def _publish(session: AsyncSession) -> str | None:
    """The publish call, sent with the COMMIT (no round trip of its own); ASCII JSON as a literal."""
    pending = session.info.pop(PENDING, None)
    if not pending:
        return None
    events = json.dumps(pending, default=str, separators=(",", ":"), ensure_ascii=True)
    return f"SELECT papo_publish_events({sql_literal(events)}::jsonb)"


STAMP_BATCH = 10_000
# Stampings start at most this often. Each is a serialised transaction with its own commit; under
# load, gathering a few milliseconds' commits into one costs the database far less than stamping
# back to back (`make bench-scale`). A quiet process stamps at once: the pause is only taken when
# the previous stamping started less than this long ago, so it adds no latency at low rates.
STAMP_GATHER_SECONDS = 0.005
STAMP_ATTEMPTS = 3


class Stamper:
    """One process's stamping, shared like a group commit: sixteen publishers committing together
    cost one stamping, not sixteen.

    A publisher only asks for a stamping and goes on (waiting for it cost a publishing write about a
    third of its rate: `make bench-scale`); whoever must see everything committed so far waits for
    the next stamping that starts after it asked (`stamped()`): the relay's rounds, a stream or a
    page taking "now" as its starting point (so it covers the writes its client saw return), a
    conditional GET whose member has an event still unnumbered."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.next: asyncio.Future[None] | None = None
        self.waited_for = False
        self.runner: asyncio.Task[None] | None = None
        self.last_started = 0.0  # time.monotonic() when the last stamping started

    def request(self, *, waited_for: bool = False) -> asyncio.Future[None]:
        """A stamping that starts after this call, started now unless one is running. One somebody
        waits for starts without gathering more commits first."""
        if self.next is None:
            self.next = asyncio.get_running_loop().create_future()
        self.waited_for = self.waited_for or waited_for
        waiting = self.next
        if self.runner is None or self.runner.done():
            self.runner = asyncio.create_task(self._run(), name="papo-event-stamper")
        return waiting

    async def stamped(self) -> None:
        await asyncio.shield(self.request(waited_for=True))

    async def _run(self) -> None:
        while self.next is not None:
            pause = self.last_started + STAMP_GATHER_SECONDS - time.monotonic()
            if pause > 0 and not self.waited_for:
                await asyncio.sleep(pause)
            self.last_started = time.monotonic()
            current, self.next, self.waited_for = self.next, None, False
            for attempt in range(1, STAMP_ATTEMPTS + 1):
                try:
                    while (
                        await self.db.call("SELECT papo_stamp_events($1)", STAMP_BATCH, event_path=True) >= STAMP_BATCH
                    ):
                        pass
                except Exception as exc:
                    if attempt < STAMP_ATTEMPTS:
                        log.warning("stamping events failed; retrying", error=str(exc) or type(exc).__name__)
                        await asyncio.sleep(0.1 * attempt)
                        continue
                    # the relay's rounds stamp what this could not
                    log.warning("stamping events failed; the relay will", error=str(exc) or type(exc).__name__)
                    current.set_exception(exc)
                    current.exception()  # retrieved: nobody may be waiting for it
                else:
                    current.set_result(None)
                break


_stampers: weakref.WeakKeyDictionary[Database, Stamper] = weakref.WeakKeyDictionary()


def _stamper(db: Database) -> Stamper:
    stamper = _stampers.get(db)
    if stamper is None:
        stamper = _stampers[db] = Stamper(db)
    return stamper


async def _stamp_soon(db: Database) -> None:
    published_alone(db)


def published_alone(db: Database) -> None:
    """Events were published by a statement that committed on its own, outside any unit of work
    (papo_post_message): they get their positions like those of a unit."""
    _stamper(db).request()


async def stamp_events(db: Database) -> None:
    """Positions for everything committed so far (migration 0025); every relay round waits for it."""
    await _stamper(db).stamped()


def _event(row: Any) -> Event:
    return Event(
        id=row["event_id"],
        tenant_id=row["event_tenant_id"],
        audience=row["event_audience"],
        user_id=row["event_user_id"],
        type=row["event_type"],
        data=row["event_payload"],
        created_at=row.get("event_created_at"),
    )


async def read_own_events(session: AsyncSession, after: int, limit: int) -> list[Event]:
    """Replay for the caller: its stream after `after`, through row-level security."""
    rows = await driver(session).fetch(
        "SELECT tenant_id AS event_tenant_id, id AS event_id, audience AS event_audience, "
        "user_id AS event_user_id, type AS event_type, payload AS event_payload "
        "FROM events WHERE id > $1 ORDER BY id LIMIT $2",
        after,
        limit,
    )
    return [_event(row) for row in rows]


EVENTS_AFTER = "SELECT * FROM papo_events_after($1, $2)"


async def read_all_events(session: AsyncSession, after: int, limit: int) -> list[Event]:
    """Every tenant's events after `after` (route them with Event.visible_to), in a unit of work."""
    return [_event(row) for row in await driver(session).fetch(EVENTS_AFTER, after, limit)]


async def relay_events(db: Database, after: int, limit: int) -> list[Event]:
    """The same read as one statement outside any unit of work: one round trip per relay round."""
    return [_event(row) for row in await db.rows(EVENTS_AFTER, after, limit, event_path=True)]


async def read_tenant_events(session: AsyncSession, tenant_id: uuid.UUID, after: int, limit: int) -> list[Event]:
    """One tenant's events after `after`, every audience (a feed filling a gap; migration 0027)."""
    rows = await driver(session).fetch("SELECT * FROM papo_tenant_events_after($1, $2, $3)", tenant_id, after, limit)
    return [_event(row) for row in rows]


async def latest_event_id(session: AsyncSession, tenant_id: uuid.UUID, user_id: str) -> int | None:
    """The newest event of this member's own stream (or the pruned horizon when they have none): a
    version of everything written to them, for conditional GETs. None while one of their committed
    events still waits for its position (a write of theirs that just returned): no version covers
    it yet."""
    latest: int | None = await driver(session).fetchval(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM events WHERE id IS NULL AND tenant_id = $1 AND user_id = $2) "
        "THEN NULL ELSE coalesce((SELECT max(id) FROM events WHERE tenant_id = $1 AND user_id = $2), "
        "(SELECT pruned_through FROM papo_events_bounds())) END",
        tenant_id,
        user_id,
    )
    return latest


async def bounds(session: AsyncSession) -> tuple[int, int]:
    """(pruned_through, head): a resume must start at or after the first, at or before the second."""
    row = await driver(session).fetchrow("SELECT pruned_through, head FROM papo_events_bounds()")
    return int(row["pruned_through"]), int(row["head"])


async def prune_events(session: AsyncSession, older_than_days: int) -> int:
    removed = await driver(session).fetchval("SELECT papo_prune_events(make_interval(days => $1))", older_than_days)
    return int(removed or 0)
