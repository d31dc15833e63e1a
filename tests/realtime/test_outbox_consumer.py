"""Outbox consumers: one process at a time works a batch, and while it works the batch out its open
transaction keeps nothing from being pruned."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from typing import Any

import asyncpg
import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from papo.db.engine import Database, driver
from papo.realtime.consumer import OutboxConsumer
from papo.realtime.service import Event
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import create_session


async def test_a_batch_is_worked_out_holding_no_transaction_id_and_by_one_process(
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
        # the batch's transaction is open, with no transaction id and no snapshot: it holds back no
        # pruning, and it holds no row lock on the cursor
        open_transactions = await owner.fetch(
            "SELECT backend_xid, backend_xmin FROM pg_stat_activity "
            "WHERE state = 'idle in transaction' AND datname = current_database()"
        )
        assert open_transactions, "the batch's transaction is open"
        assert [(row["backend_xid"], row["backend_xmin"]) for row in open_transactions] == [(None, None)] * len(
            open_transactions
        )
        async with owner.transaction():
            assert (
                await owner.fetchval("SELECT last_id FROM outbox_cursors WHERE name = $1 FOR UPDATE NOWAIT", name) == 0
            )
        assert await second.run_once() is None  # the first process is working this consumer
        go_on.set()
        covered = await asyncio.wait_for(working_out, 5)
        assert covered is not None and covered > 0
        assert [who for who, _ in stored] == ["first"] and len(stored[0][1]) == covered
        assert await owner.fetchval("SELECT last_id FROM outbox_cursors WHERE name = $1", name) == stored[0][1][-1]
        assert await second.run_once() is not None  # between batches the consumer is anyone's
        while await second.run_once():  # the rest of the outbox (earlier tests' events), if any
            pass
        last = await owner.fetchval("SELECT last_id FROM outbox_cursors WHERE name = $1", name)
        del stored[1:]

        # The cursor moved while a batch was worked out (it cannot while the lock holds; here the
        # owner moves it): what was worked out from the old position is not stored.
        await create_session(client, member, "another event")
        async with asyncio.timeout(5):  # numbered (stamped) after its commit, and only then read
            while not await owner.fetchval("SELECT max(id) > $1 FROM events", last):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        working.clear()
        go_on.clear()
        working_out = asyncio.create_task(first.run_once())
        await asyncio.wait_for(working.wait(), 5)
        await owner.execute("UPDATE outbox_cursors SET last_id = last_id + 1 WHERE name = $1", name)
        go_on.set()
        assert await asyncio.wait_for(working_out, 5) is None
        assert [who for who, _ in stored] == ["first"]
        assert await owner.fetchval("SELECT last_id FROM outbox_cursors WHERE name = $1", name) == last + 1
        async with db.transaction() as session:  # never backwards (a replay would send old events again)
            assert await driver(session).fetchval("SELECT papo_outbox_advance($1, $2, $3)", name, last + 1, 5) is None
        assert await owner.fetchval("SELECT last_id FROM outbox_cursors WHERE name = $1", name) == last + 1
    finally:
        go_on.set()
        await owner.close()
