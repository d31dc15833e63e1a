"""The unit of work never hands a pooled connection back inside an open transaction."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from sqlalchemy import text

from papo.auth.models import Role
from papo.db.engine import Database, RlsContext, driver
from tests.conftest import ProvisionedDatabase, plain_dsn


async def test_a_connection_left_in_a_transaction_is_cleaned_before_reuse(
    database: ProvisionedDatabase, make_tenant: Any
) -> None:
    tenant = await make_tenant()
    member = await tenant.member(Role.member)
    context = RlsContext(tenant.id, member.user_id, "member")
    pool = Database(database.app_url, pool_size=1)
    try:
        # What a unit of work cancelled in the middle of COMMIT leaves behind.
        async with pool.engine.connect() as connection:
            raw = (await connection.get_raw_connection()).driver_connection
            await raw.execute("BEGIN")
        async with pool.transaction(context) as session:
            await driver(session).execute("UPDATE users SET name = 'committed' WHERE id = $1", member.user_id)
        observer = await asyncpg.connect(plain_dsn(database.owner_url))
        try:
            assert await observer.fetchval("SELECT name FROM users WHERE id = $1", member.user_id) == "committed"
        finally:
            await observer.close()
    finally:
        await pool.dispose()


async def test_cancelling_a_unit_of_work_rolls_it_back(database: ProvisionedDatabase, make_tenant: Any) -> None:
    tenant = await make_tenant()
    member = await tenant.member(Role.member)
    context = RlsContext(tenant.id, member.user_id, "member")
    pool = Database(database.app_url, pool_size=1)
    written = asyncio.Event()

    async def interrupted() -> None:
        async with pool.transaction(context) as session:
            await driver(session).execute("UPDATE users SET name = 'never' WHERE id = $1", member.user_id)
            written.set()
            await asyncio.sleep(30)

    try:
        task = asyncio.create_task(interrupted())
        await written.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        async with pool.transaction(context) as session:
            name = await driver(session).fetchval("SELECT name FROM users WHERE id = $1", member.user_id)
        assert name != "never"
    finally:
        await pool.dispose()


async def test_a_unit_cancelled_mid_query_ends_as_a_cancellation(
    database: ProvisionedDatabase, make_tenant: Any
) -> None:
    """The driver drops the connection when a query is cancelled, so the rollback after it fails; the
    caller must still see the cancellation (a worker being stopped that saw a database error instead
    would carry on, and the server would never finish shutting down)."""
    tenant = await make_tenant()
    member = await tenant.member(Role.member)
    context = RlsContext(tenant.id, member.user_id, "member")
    pool = Database(database.app_url, pool_size=1)
    started = asyncio.Event()

    async def sleeping() -> None:
        async with pool.transaction(context) as session:
            started.set()
            await session.execute(text("SELECT pg_sleep(30)"))

    try:
        task = asyncio.create_task(sleeping())
        await started.wait()
        await asyncio.sleep(0.3)  # inside the query
        task.cancel()
        (outcome,) = await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 20)
        assert isinstance(outcome, asyncio.CancelledError), repr(outcome)
        async with pool.transaction(context) as session:  # the pool is usable afterwards
            assert await driver(session).fetchval("SELECT 1") == 1
    finally:
        await pool.dispose()
