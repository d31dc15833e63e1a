"""Numbering committed events and the relay's read never queue behind the pool's borrowers: under
load every connection of the pool can be taken, and an event must still reach its subscribers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg

from papo.auth.models import Role
from papo.db.engine import Database
from papo.realtime.service import relay_events, stamp_events
from tests.conftest import ProvisionedDatabase, plain_dsn


async def test_an_event_is_numbered_and_relayed_while_every_pooled_connection_is_taken(
    database: ProvisionedDatabase, make_tenant: Any
) -> None:
    tenant = await make_tenant()
    member = await tenant.member(Role.member)
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    pool = Database(database.app_url, pool_size=1)  # one connection and one overflow
    try:
        head = await owner.fetchval("SELECT head FROM papo_events_bounds()")
        event = {"tenant_id": str(tenant.id), "audience": "user", "user_id": member.user_id, "type": "test.tick"}
        # committed by another process, not numbered yet
        await owner.execute("SELECT papo_publish_events($1::jsonb)", json.dumps([{**event, "payload": {}}]))
        async with pool.engine.connect(), pool.engine.connect():  # every pooled connection is busy
            await asyncio.wait_for(stamp_events(pool), 5)
            relayed = await asyncio.wait_for(relay_events(pool, head, 100), 5)
        assert [(e.type, e.user_id) for e in relayed if e.tenant_id == tenant.id] == [("test.tick", member.user_id)]
    finally:
        await owner.close()
        await pool.dispose()
