"""The housekeeping sweep runs in one process at a time and removes only what has expired."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from papo.db.engine import Database
from papo.ops.maintenance import MAINTENANCE_LOCK, run_once
from papo.settings import Settings
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import create_session


async def test_one_process_at_a_time_and_only_expired_rows(
    db: Database, settings: Settings, database: ProvisionedDatabase, client: httpx.AsyncClient, make_tenant: Any
) -> None:
    member = await (await make_tenant()).member()
    live = (await create_session(client, member, "live"))["id"]
    other = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        async with other.transaction():
            await other.execute("SELECT pg_advisory_xact_lock($1)", MAINTENANCE_LOCK)
            assert await run_once(db, settings) is None  # another process is sweeping
    finally:
        await other.close()
    result = await run_once(db, settings)
    assert result is not None
    # Nothing recent was touched: the live chat and its creation event are still there.
    assert (await client.get(f"/api/v1/sessions/{live}", headers=member.headers)).status_code == 200
