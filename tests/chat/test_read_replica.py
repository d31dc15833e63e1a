"""PAPO_READ_DATABASE_URL: history, search and exports read through the replica's pool; writes never.

No physical standby here: the "replica" is the same database reached through a second, read-only
pool (default_transaction_read_only, as a hot standby behaves), which is what the routing needs."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from papo.app import create_app
from papo.auth.models import Role
from papo.settings import Settings
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import create_session, send

READERS_SQL = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'papo-read:%' AND datname = $1"


async def test_history_search_and_exports_read_through_the_replica(
    settings: Settings, database: ProvisionedDatabase, make_tenant: Any
) -> None:
    replica_settings = settings.model_copy(update={"read_database_url": settings.app_database_url})
    app = create_app(replica_settings)
    observer = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        async with app.router.lifespan_context(app):
            state = app.state.papo
            assert state.reads is not state.db
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://papo.test") as http:
                alice = await (await make_tenant()).member(Role.member)
                chat = await create_session(http, alice, "replica")
                await send(http, alice, chat["id"], "a busca encontra isto")
                await state.reads.dispose()  # start from no reader connections, then count them
                assert await observer.fetchval(READERS_SQL, database.owner_url.database) == 0

                history = await http.get(f"/api/v1/sessions/{chat['id']}/messages", headers=alice.headers)
                assert history.status_code == 200
                assert [m["content"] for m in history.json()["items"]] == ["a busca encontra isto"]
                assert "etag" in history.headers
                seed_history = await http.get(f"/api/chat/message?sessionId={chat['id']}", headers=alice.headers)
                assert [m["content"] for m in seed_history.json()] == ["a busca encontra isto"]
                found = await http.get("/api/v1/search", params={"q": "busca"}, headers=alice.headers)
                assert found.status_code == 200 and len(found.json()["items"]) == 1
                exported = await http.get(f"/api/v1/sessions/{chat['id']}/export", headers=alice.headers)
                assert exported.status_code == 200 and "a busca encontra isto" in exported.text
                assert await observer.fetchval(READERS_SQL, database.owner_url.database) >= 1

                # writes still go to the primary; the replica's pool would refuse them
                assert (await send(http, alice, chat["id"], "depois"))["content"] == "depois"
                with pytest.raises(Exception, match="read-only transaction"):
                    async with state.reads.transaction() as session:
                        await session.execute(text("CREATE TEMP TABLE nope (x int)"))
    finally:
        await observer.close()
