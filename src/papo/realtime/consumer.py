"""Background work driven by the events outbox (sentiment scoring, outbound webhooks).

The outbox already holds every change in commit order, so a consumer needs no queue of its own and
adds nothing to the write path: it keeps a cursor. Each batch is one transaction, and one process at
a time works a consumer: the transaction holds an advisory lock on the consumer's name (the others
skip it), reads the cursor and the batch, works the batch out, then stores the result and advances
the cursor. While the batch is worked out (scoring takes seconds under load) the transaction has no
transaction id and, between statements, no snapshot, so it keeps no table from pruning the row
versions written meanwhile (migration 0044); its lock goes with it, also when its connection dies.
A crash repeats at most one batch, which handlers make harmless (their writes are idempotent)."""

from __future__ import annotations

import asyncio
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
OUTBOX_LOCK_CLASS = 7071  # advisory locks (this class, hashtext(name)): one per consumer


class OutboxConsumer(Generic[Work]):
    """`prepare` works a batch out, writing nothing; `store` writes what it found, in the same
    transaction, just before the cursor advances."""

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
        self.wake = asyncio.Event()  # set by the hub's relay when new events were committed
        self.behind = False  # the last batch was full
        self.cursor_made = False

    async def run_once(self) -> int | None:
        """One batch: how many events it covered, or None when another process is working it."""
        if not self.cursor_made:  # on its own: making the cursor's row gives a transaction an id
            async with self.db.transaction() as session:
                await driver(session).fetchval("SELECT papo_outbox_position($1)", self.name)
            self.cursor_made = True
        async with self.db.transaction() as session:
            connection = driver(session)
            if not await connection.fetchval(
                "SELECT pg_try_advisory_xact_lock($1, hashtext($2))", OUTBOX_LOCK_CLASS, self.name
            ):
                return None
            position = await connection.fetchval("SELECT papo_outbox_position($1)", self.name)
            events = await read_all_events(session, position, self.batch)
            if not events:
                return 0
            # The read's portal keeps its snapshot until another statement replaces it: this one does
            # (a simple query), so that no snapshot is held while the batch is worked out.
            await connection.execute("SELECT 1")
            work = await self.prepare(events)
            assert events[-1].id is not None
            if not await connection.fetchval(
                "SELECT papo_outbox_advance($1, $2, $3)", self.name, position, events[-1].id
            ):
                return None  # the cursor moved meanwhile (it cannot while the lock holds): nothing stored
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
