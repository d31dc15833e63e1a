"""Background work driven by the events outbox (sentiment scoring, outbound webhooks).

The outbox already holds every change in commit order, so a consumer needs no queue of its own and
adds nothing to the write path: it keeps a cursor, and each batch (its writes and the cursor's
advance) is one transaction. The cursor row stays locked for that transaction, so one process at a
time works a consumer while the others skip; a crash repeats at most one batch, which handlers
make harmless (their writes are idempotent)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from papo.db.engine import Database, driver
from papo.realtime.service import Event, read_all_events
from papo.waiting import work_when_woken

Handler = Callable[[AsyncSession, Sequence[Event]], Awaitable[None]]
# After a wake-up a consumer lets this long's events gather before its round: woken by every relay
# round, it otherwise spent a transaction per message at low rates, as much CPU as the fan-out.
SETTLE_SECONDS = 0.1


class OutboxConsumer:
    def __init__(
        self, db: Database, name: str, handle: Handler, *, batch: int = 500, poll_seconds: float = 2.0
    ) -> None:
        self.db = db
        self.name = name
        self.handle = handle
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.wake = asyncio.Event()  # set by the hub's relay when new events were committed
        self.behind = False  # the last batch was full

    async def run_once(self) -> int | None:
        """One batch: how many events it covered, or None when another process holds the cursor."""
        async with self.db.transaction() as session:
            position = await driver(session).fetchval("SELECT papo_outbox_claim($1)", self.name)
            if position is None:
                return None
            events = await read_all_events(session, position, self.batch)
            if events:
                await self.handle(session, events)
                await driver(session).execute("SELECT papo_outbox_advance($1, $2)", self.name, events[-1].id)
            return len(events)

    async def run(self) -> None:
        await work_when_woken(self.wake, self.poll_seconds, self._full_batch, name=f"outbox consumer {self.name}")

    async def _full_batch(self) -> bool:
        """One batch; True when it was full (there may be more right away)."""
        if not self.behind:
            await asyncio.sleep(SETTLE_SECONDS)
        self.behind = (await self.run_once() or 0) >= self.batch
        return self.behind
