"""Outbox consumers: a batch is worked out with no transaction open, and stored only by the process
that still holds the cursor."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from typing import Any

import asyncpg
import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from papo.db.engine import Database
from papo.realtime.consumer import OutboxConsumer
from papo.realtime.service import Event
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import create_session


async def test_a_batch_is_worked_out_with_no_transaction_open_and_stored_only_under_the_lease(
    db: Database, database: ProvisionedDatabase, client: httpx.AsyncClient, make_tenant: Any
) -> None:
    member = await (await make_tenant()).member()
    await create_session(client, member, "an event in the outbox")
    name = "test-" + secrets.token_hex(4)
    working, go_on = asyncio.Event(), asyncio.Event()
    stored: list[tuple[str, list[int]]] = []

    async def slow(events: Sequence[Event]) -> list[int]:
        working.set()
        await go_on.wait()
        return [event.id or 0 for event in events]

    async def quick(events: Sequence[Event]) -> list[int]:
        return [event.id or 0 for event in events]

    def storing(who: str) -> Any:
        async def store(session: AsyncSession, ids: list[int]) -> None:
            stored.append((who, ids))

        return store

    first = OutboxConsumer(db, name, slow, storing("first"))
    second = OutboxConsumer(db, name, quick, storing("second"))
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        working_out = asyncio.create_task(first.run_once())
        await asyncio.wait_for(working.wait(), 5)
        async with owner.transaction():  # nothing holds the cursor's row while the batch is worked out
            assert (
                await owner.fetchval("SELECT last_id FROM outbox_cursors WHERE name = $1 FOR UPDATE NOWAIT", name) == 0
            )
        assert await second.run_once() is None  # the lease is the first's
        go_on.set()
        covered = await asyncio.wait_for(working_out, 5)
        assert covered is not None and covered > 0
        assert [who for who, _ in stored] == ["first"] and len(stored[0][1]) == covered
        last = stored[0][1][-1]
        assert await owner.fetchval("SELECT last_id FROM outbox_cursors WHERE name = $1", name) == last

        # A batch worked out for longer than the lease: another process took the cursor meanwhile,
        # and what the first worked out is dropped.
        await create_session(client, member, "another event")
        working.clear()
        go_on.clear()
        working_out = asyncio.create_task(first.run_once())
        await asyncio.wait_for(working.wait(), 5)
        await owner.execute(
            "UPDATE outbox_cursors SET leased_until = now() - interval '1 second' WHERE name = $1", name
        )
        assert (await second.run_once() or 0) >= 1
        go_on.set()
        assert await asyncio.wait_for(working_out, 5) is None
        assert [who for who, _ in stored] == ["first", "second"]
        assert stored[1][1][0] > last
    finally:
        go_on.set()
        await owner.close()
