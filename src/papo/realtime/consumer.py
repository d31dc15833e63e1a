"""Background work driven by the events outbox (sentiment scoring, outbound webhooks).

The outbox already holds every change in commit order, so a consumer needs no queue of its own and
adds nothing to the write path: it keeps a cursor. One process at a time works a consumer: it leases
the cursor (the others skip it while the lease runs), reads a batch, works it out with no
transaction open (scoring takes seconds under load, and an open transaction would keep every table
from pruning the row versions left behind meanwhile), then stores the result and advances the
cursor in one short transaction, only if it still holds the cursor where it read it (migration
0044). A crash repeats at most one batch, which handlers make harmless (their writes are
idempotent)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from papo.db.engine import Database, driver
from papo.realtime.service import Event, read_all_events
from papo.waiting import work_when_woken

Work = TypeVar("Work")
# After a wake-up a consumer lets this long's events gather before its round: woken by every relay
# round, it otherwise spent a transaction per message at low rates, as much CPU as the fan-out.
SETTLE_SECONDS = 0.1
# A process that died holding a cursor holds it up this long at most; a batch worked for longer is
# dropped (the cursor may have moved on) and worked again.
LEASE_SECONDS = 60.0


class OutboxConsumer(Generic[Work]):
    """`prepare` works a batch out (no transaction open); `store` writes what it found, in the
    transaction that advances the cursor."""

    def __init__(
        self,
        db: Database,
        name: str,
        prepare: Callable[[Sequence[Event]], Awaitable[Work]],
        store: Callable[[AsyncSession, Work], Awaitable[None]],
        *,
        batch: int = 500,
        poll_seconds: float = 2.0,
    ) -> None:
        self.db = db
        self.name = name
        self.prepare = prepare
        self.store = store
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.holder = uuid.uuid4()  # this process, as the cursor's leaseholder
        self.wake = asyncio.Event()  # set by the hub's relay when new events were committed
        self.behind = False  # the last batch was full

    async def run_once(self) -> int | None:
        """One batch: how many events it covered, or None when another process holds the cursor."""
        async with self.db.transaction() as session:
            position = await driver(session).fetchval(
                "SELECT papo_outbox_lease($1, $2, $3)", self.name, self.holder, LEASE_SECONDS
            )
            if position is None:
                return None
            events = await read_all_events(session, position, self.batch)
        if not events:
            return 0
        work = await self.prepare(events)
        async with self.db.transaction() as session:
            still_held = await driver(session).fetchval(
                "SELECT papo_outbox_advance($1, $2, $3, $4, $5)",
                self.name,
                self.holder,
                position,
                events[-1].id,
                LEASE_SECONDS,
            )
            if not still_held:
                return None  # the lease ran out and another process took the cursor: its work counts
            await self.store(session, work)
        return len(events)

    async def run(self) -> None:
        await work_when_woken(self.wake, self.poll_seconds, self._full_batch, name=f"outbox consumer {self.name}")

    async def _full_batch(self) -> bool:
        """One batch; True when it was full (there may be more right away)."""
        if not self.behind:
            await asyncio.sleep(SETTLE_SECONDS)
        self.behind = (await self.run_once() or 0) >= self.batch
        return self.behind
